"""Reliability: a worker killed with SIGKILL during a long request (the request gets an error promptly,
TorchServe starts a new worker, the next requests succeed with the same bytes); weights that cannot be read (a
truncated .pth refused by the launcher before TorchServe starts; a damaged archive whose worker cannot load:
the launcher ends non-zero with a clear message, in bounded time, leaving nothing running). Stop-and-start is
in test_reliability_determinism.py. tests/serve/test_serve_lifecycle.py already covers junk bytes as a .pth and
a damaged config.json in an archive."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import threading
import time
import zipfile

import pytest
import requests
import torch

from serve.test_serve_lifecycle import _pid_alive

from .conftest import DEMO, REFERENCE, answer_of, launch

LONG = {"sequence": " ".join(["the long film was good and then bad and then good again"] * 6), "n_steps": 500}


@pytest.mark.heavy
def test_kill_9_worker_during_a_request(demo_server, tally):
    server = demo_server["server"]
    record = tally("3 faults")
    reference = answer_of(server, REFERENCE)
    [pid] = server.worker_pids(DEMO)
    offset = len(server.model_log())
    outcome = {}

    def long_request():
        started = time.time()
        try:
            response = requests.post(server.url(DEMO), data=json.dumps(LONG), timeout=120,
                                     headers={"Content-Type": "application/json"})
            outcome["status"] = response.status_code
        except requests.RequestException as error:
            outcome["status"] = type(error).__name__
        outcome["seconds"] = time.time() - started

    thread = threading.Thread(target=long_request)
    thread.start()
    deadline = time.time() + 60
    while "intgrads: batch of" not in server.model_log()[offset:] and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=90)
    assert not thread.is_alive(), "the request hung after its worker was killed"
    waited = time.time() - killed_at
    print(f"\n[reliability] kill -9: request answered {outcome['status']} {waited:.1f} s after the kill")
    assert record.case(outcome["status"] != 200 and waited < 30), outcome

    deadline = time.time() + 180
    pids = []
    while time.time() < deadline:
        try:
            pids = server.worker_pids(DEMO)
        except requests.RequestException:
            pids = []
        if pids and pid not in pids:
            break
        time.sleep(0.5)
    assert record.case(bool(pids) and pid not in pids), f"no new worker: {pids}"
    results = [answer_of(server, REFERENCE) for _ in range(3)]
    assert record.case(all(item == reference for item in results))


def _truncated_state_dict(bundle, path):
    buffer = io.BytesIO()
    torch.save(bundle.model.state_dict(), buffer)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_truncated_pth_is_refused_by_the_launcher(demo_server, demo_bundle, shared_store, tmp_path, tally):
    from intgrads.launcher.demo import DEMO_NAME

    record = tally("3 faults")
    pth = tmp_path / "truncated.pth"
    _truncated_state_dict(demo_bundle, pth)
    demo_dir = shared_store / DEMO_NAME
    started = time.time()
    _, result = launch(tmp_path, tmp_path / "store", ["-bp", pth, "--config", demo_dir / "config.json",
                                                      "--tokenizer", demo_dir], check=False)
    seconds = time.time() - started
    ok = (result.returncode == 2 and "cannot load the bert model" in result.stderr and "truncated.pth" in result.stderr
          and "not a readable PyTorch weights file" in result.stderr and seconds < 120)
    assert record.case(ok), (result.returncode, seconds, result.stderr[-2000:])
    assert not (tmp_path / "run" / "state.json").exists()      # TorchServe was never started


@pytest.mark.heavy
def test_worker_that_cannot_load_ends_the_launcher(demo_server, shared_store, tmp_path, tally):
    """An archive whose weights are damaged after it was built (newer than its inputs, so reused unchecked):
    the worker fails in TorchServe; the launcher must say so and stop, not wait or retry silently."""
    from intgrads.launcher.demo import DEMO_NAME

    record = tally("3 faults")
    store = tmp_path / "store"
    store.mkdir()
    shutil.copytree(shared_store / DEMO_NAME, store / DEMO_NAME, copy_function=os.link)
    with zipfile.ZipFile(shared_store / f"{DEMO}.mar") as source, \
            zipfile.ZipFile(store / f"{DEMO}.mar", "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("model.safetensors"):
                data = data[: len(data) // 3]
            target.writestr(item, data)
    future = time.time() + 3600
    os.utime(store / f"{DEMO}.mar", (future, future))
    started = time.time()
    _, result = launch(tmp_path, store, ["--demo", "--model-name", DEMO, "--ready-timeout", "240"], check=False)
    seconds = time.time() - started
    print(f"\n[reliability] damaged archive: launcher exit {result.returncode} after {seconds:.1f} s")
    ok = (result.returncode != 0 and "a worker failed to load its model" in result.stderr
          and "model_log.log" in result.stderr and seconds < 240)
    assert record.case(ok), (result.returncode, seconds, result.stderr[-3000:])
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert record.case(not _pid_alive(state["pid"]))
