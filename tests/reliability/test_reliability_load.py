"""Reliability: 200 requests at concurrency 16 on the demo model (0 failures, each answer equal to the
single-request answer for its sentence, p50/p95/p99 printed); beyond a tiny job queue (job_queue_size=2 in a copy
of config.properties passed with --ts-config) TorchServe answers 503 at once instead of hanging."""

from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .conftest import DEMO, FIGURES, OPEN, bearer, decompressed

SENTENCES = [
    "a wonderful film.", "the plot was dull.", "great acting, weak script.", "i loved every minute.",
    "boring and far too long.", "the music was lovely.", "not bad at all.", "a total mess of a movie.",
    "funny, warm and clever.", "the ending felt rushed.",
]
N_REQUESTS, CONCURRENCY, N_STEPS = 200, 16, 8
JSON = {"Content-Type": "application/json"}


def _percentile(values, q):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[index]


@pytest.mark.heavy
def test_200_requests_at_concurrency_16(demo_server, tally):
    server = demo_server["server"]
    record = tally("2 load")
    url = server.url(DEMO)
    payloads = [json.dumps({"sequence": s, "n_steps": N_STEPS}) for s in SENTENCES]
    single = [decompressed(requests.post(url, data=p, headers=JSON, timeout=120)) for p in payloads]
    session_local = threading.local()

    def send(index):
        session = getattr(session_local, "session", None) or requests.Session()
        session_local.session = session
        started = time.perf_counter()
        try:
            response = session.post(url, data=payloads[index % len(payloads)], headers=JSON, timeout=120)
            seconds = time.perf_counter() - started
            same = response.status_code == 200 and decompressed(response) == single[index % len(payloads)]
            return same, seconds, response.status_code
        except (requests.RequestException, OSError, AssertionError) as error:
            return False, time.perf_counter() - started, type(error).__name__

    wall = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(send, range(N_REQUESTS)))
    wall = time.perf_counter() - wall
    latencies = [seconds * 1000 for _, seconds, _ in results]
    failures = [(i, status) for i, (ok, _, status) in enumerate(results) if not ok]
    for ok, _, _ in results:
        record.case(ok)
    FIGURES.append(f"load: {N_REQUESTS} requests at concurrency {CONCURRENCY}, n_steps {N_STEPS}: {len(failures)} "
                   f"failures, {N_REQUESTS / wall:.1f} req/s; latency ms p50 {_percentile(latencies, 50):.0f} "
                   f"p95 {_percentile(latencies, 95):.0f} p99 {_percentile(latencies, 99):.0f}")
    print(f"\n[reliability] load: {N_REQUESTS} requests, concurrency {CONCURRENCY}, n_steps {N_STEPS}: "
          f"{len(failures)} failures, {N_REQUESTS / wall:.1f} req/s, latency ms p50 {_percentile(latencies, 50):.0f} "
          f"p95 {_percentile(latencies, 95):.0f} p99 {_percentile(latencies, 99):.0f} "
          f"(mean {statistics.mean(latencies):.0f}, max {max(latencies):.0f})")
    assert not failures, failures[:10]


def test_queue_overflow_gets_503_promptly(open_server, tally):
    """One worker, batch size 1, job_queue_size=2: of 12 simultaneous slow requests, those beyond the queue are
    refused with 503 at once; the rest are answered; none hangs."""
    server = open_server
    record = tally("2 load")
    url = server.url(OPEN)
    headers = {**JSON, **bearer(server.keys["inference"])}
    slow = json.dumps({"sequence": "the long film was good and then bad and then good again", "n_steps": 64})
    barrier = threading.Barrier(12)

    def send(_):
        barrier.wait(timeout=30)
        started = time.perf_counter()
        try:
            response = requests.post(url, data=slow, headers=headers, timeout=120)
            return response.status_code, time.perf_counter() - started
        except requests.RequestException as error:
            return type(error).__name__, time.perf_counter() - started

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(send, range(12)))
    refused = [seconds for status, seconds in results if status == 503]
    answered = [status for status, _ in results if status == 200]
    FIGURES.append(f"queue overflow (job_queue_size=2, 12 at once): {len(answered)} answered, {len(refused)} x 503, "
                   f"slowest 503 in {max(refused, default=0) * 1000:.0f} ms")
    print(f"\n[reliability] queue overflow: {len(answered)} answered, {len(refused)} refused with 503 "
          f"(slowest refusal {max(refused, default=0) * 1000:.0f} ms)")
    assert record.case(len(refused) >= 1), results
    assert record.case(all(seconds < 5 for seconds in refused)), results
    assert record.case(len(answered) + len(refused) == 12), results
    after = requests.post(url, data=slow, headers=headers, timeout=120)
    assert record.case(after.status_code == 200), after.text[:300]
