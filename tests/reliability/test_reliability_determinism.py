"""Reliability: the same request answered by two workers, and across a stop and start, gives identical bytes
after decompression (the raw torch.save bytes, and the loaded tensors bitwise)."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serve.conftest import free_port_block, post_json

from .conftest import DEMO, REFERENCE, answer_of, decompressed, launch, load, same_tensors

PAYLOADS = [
    REFERENCE,
    {"sequence": "the food was awful and the service slow.", "n_steps": 6, "baseline": "rand-norm",
     "method": "riemann_trapezoid", "target": "predicted"},
    {"sequences": ["short one", "a second, longer sentence about a dull film"], "n_steps": 5, "baseline": "pad"},
]


def _scale(server, workers: int, timeout: float = 180):
    response = server.manage("PUT", f"/models/{DEMO}?min_worker={workers}&max_worker={workers}&synchronous=true",
                             timeout=timeout)
    assert response.status_code == 200, response.text
    deadline = time.time() + timeout
    while time.time() < deadline:
        workers_now = server.describe(DEMO)["workers"]
        if len(workers_now) == workers and all(w.get("status") == "READY" for w in workers_now):
            return
        time.sleep(0.5)
    raise AssertionError(f"not {workers} READY workers after {timeout} s: {server.describe(DEMO)['workers']}")


def test_two_workers_answer_identical_bytes(demo_server, tally):
    server = demo_server["server"]
    record = tally("4 determinism")
    single = [answer_of(server, payload) for payload in PAYLOADS]
    _scale(server, 2)
    try:
        offset = len(server.model_log())
        answers = {i: [] for i in range(len(PAYLOADS))}
        for _round in range(4):
            for index, payload in enumerate(PAYLOADS):
                barrier = threading.Barrier(2)

                def send(_):
                    barrier.wait(timeout=30)
                    return decompressed(post_json(server.url(DEMO), payload))

                with ThreadPoolExecutor(2) as pool:
                    answers[index] += list(pool.map(send, range(2)))
        used = set(re.findall(r"(W-\d+-[\w.-]+?)-stdout MODEL_LOG - intgrads: batch of", server.model_log()[offset:]))
        assert len(used) == 2, f"both workers should have answered; saw {used}"
        for index, raw in answers.items():
            bytes_equal = all(item == single[index] for item in raw)
            tensors_equal = all(same_tensors(load(item), load(single[index])) for item in raw)
            assert record.case(bytes_equal and tensors_equal), f"payload {index}: answers differ between workers"
    finally:
        _scale(server, 1)


@pytest.mark.heavy
def test_stop_and_start_again_same_bytes(demo_server, shared_store, tally):
    server = demo_server["server"]
    record = tally("4 determinism")
    before = [answer_of(server, payload) for payload in PAYLOADS]
    stopped = server.stop()
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    with __import__("pytest").raises(requests.ConnectionError):
        requests.get(f"{server.base}/ping", timeout=5)
    # the same layout as before (answers are bitwise equal for the same torch threads per worker)
    again, result = launch(server.home, shared_store, ["--demo", "--model-name", DEMO, "--workers", "1"],
                           port=free_port_block(), run_dir=server.run_dir)
    demo_server["server"] = again
    for payload, old in zip(PAYLOADS, before):
        new = answer_of(again, payload)
        assert record.case(new == old and same_tensors(load(new), load(old))), payload
