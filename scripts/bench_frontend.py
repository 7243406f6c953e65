#!/usr/bin/env python3
"""The front ends' own byte paths: one answer-sized body whole, or in pieces (streamed responses), through
TorchServe and through Ray Serve's proxy, side by side in one run.

TorchServe's cost per MB grows with the size of a worker's response frame. A handler may instead send its answer in
pieces with ``send_intermediate_predict_response`` (TorchServe's streamed responses: each piece is one frame from
the worker and one HTTP chunk to the client). This measures whether that helps, with nothing else in the way: a
handler that answers prebuilt random bytes of the size asked (``{"mb": S, "piece_mb": P}``; P = 0: whole),
one worker, TorchServe 0.12 on this machine's Java, and a client that reads each body to its end
(``http.client``, which also decodes the chunks). For each size and piece size: the median wall seconds per
answer over ``--repeats`` requests after a warm-up, as MB/s of body, and the frontend's and the worker's CPU
seconds per answer (``/proc/PID/stat``). The bytes are checked against the handler's.

The Ray rows (``--frontends ray``, bench_ray_bytes.py) answer the same bytes from a Serve app with one replica
behind Ray's HTTP proxy; their "frontend" CPU is every process of that Ray cluster but the replica's.

    .venv/bin/python scripts/bench_frontend.py --mb 16 64 128 --piece-mb 0 2 --json docs/bench_frontend_cpu.json
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_common import proc_cpu  # noqa: E402

HANDLER = '''
import hashlib, json, os
from ts.handler_utils.utils import send_intermediate_predict_response

_CACHE = {}


def _payload(mb):
    if mb not in _CACHE:
        _CACHE.clear()
        _CACHE[mb] = os.urandom(int(mb * 1e6))
    return _CACHE[mb]


def handle(data, context):
    if data is None:
        return None
    body = data[0].get("body") or data[0].get("data")
    ask = json.loads(body if isinstance(body, (str, bytes, bytearray)) else json.dumps(body))
    payload = _payload(ask["mb"])
    context.set_response_header(0, "X-Sha256", hashlib.sha256(payload).hexdigest())
    piece = int(ask.get("piece_mb", 0) * 1e6)
    if piece <= 0 or piece >= len(payload):
        return [payload]
    view = memoryview(payload)
    starts = list(range(0, len(payload), piece))
    for start in starts[:-1]:
        send_intermediate_predict_response([bytes(view[start:start + piece])], context.request_ids,
                                           "Intermediate Prediction success", 200, context)
    return [bytes(view[starts[-1]:])]
'''


def build(work: Path) -> Path:
    (work / "store").mkdir()
    (work / "bytes_handler.py").write_text(HANDLER)
    archiver = str(Path(sys.executable).parent / "torch-model-archiver")
    subprocess.run([archiver, "--model-name", "bytes", "--version", "1", "--handler", str(work / "bytes_handler.py"),
                    "--export-path", str(work / "store")], check=True)
    (work / "config.properties").write_text(
        "inference_address=http://127.0.0.1:8391\nmanagement_address=http://127.0.0.1:8392\n"
        "metrics_address=http://127.0.0.1:8393\ndisable_system_metrics=true\ndefault_workers_per_model=1\n"
        "max_response_size=1073741824\nmax_request_size=1048576\nenable_envvars_config=false\n")
    return work / "store"


def start(work: Path, store: Path) -> tuple[dict, int]:
    """Start TorchServe on the one model; (its environment, the worker's pid) once the worker is ready."""
    from intgrads.system import find_java

    java = find_java()
    env = dict(os.environ, TMPDIR=str(work), LOG_LOCATION=str(work / "logs"), METRICS_LOCATION=str(work / "logs"),
               JAVA_HOME=str(java.home), PATH=str(java.home / "bin") + os.pathsep + os.environ.get("PATH", ""))
    torchserve = str(Path(sys.executable).parent / "torchserve")
    subprocess.run([torchserve, "--start", "--ts-config", str(work / "config.properties"), "--model-store",
                    str(store), "--models", "bytes=bytes.mar", "--ncs", "--disable-token-auth"], env=env, cwd=work,
                   check=True, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", 8392, timeout=5)
            connection.request("GET", "/models/bytes")
            workers = json.loads(connection.getresponse().read())[0]["workers"]
            if workers and workers[0]["status"] == "READY":
                return env, int(workers[0]["pid"])
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.5)
    raise SystemExit("TorchServe's worker did not become ready")


def frontend_pid(work: Path) -> int:
    """This run's TorchServe frontend (Java) process: the pid file TorchServe writes in its TMPDIR."""
    return int((work / ".model_server.pid").read_text().split()[0])


def one(mb: float, piece_mb: float, port: int = 8391) -> tuple[float, int, str, str]:
    """One request: (wall seconds, body bytes, the body's sha256, the handler's sha256)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    connection.request("POST", "/predictions/bytes", body=json.dumps({"mb": mb, "piece_mb": piece_mb}),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    body = response.read()
    seconds = time.perf_counter() - started
    connection.close()
    return seconds, len(body), hashlib.sha256(body).hexdigest(), response.getheader("X-Sha256") or ""


def measure(mb: float, piece_mb: float, repeats: int, frontend_pids: list[int], worker: int, port: int = 8391,
            frontend: str = "torchserve") -> dict:
    one(mb, piece_mb, port)
    times, checked = [], True
    pids = [*frontend_pids, worker]
    cpu0 = [proc_cpu(pid) for pid in pids]
    for _ in range(repeats):
        seconds, size, digest, expected = one(mb, piece_mb, port)
        times.append(seconds)
        checked &= size == int(mb * 1e6) and (not expected or digest == expected)
    cpu = [(proc_cpu(pid) - before) / repeats for pid, before in zip(pids, cpu0)]
    median = statistics.median(times)
    return {"frontend": frontend, "mb": mb, "piece_mb": piece_mb, "seconds": median, "mb_per_s": mb / median,
            "frontend_cpu": sum(cpu[:-1]), "worker_cpu": cpu[-1], "bytes_checked": bool(checked)}


def report(row: dict):
    piece = row["piece_mb"]
    print(f"{row['frontend']:>10} {row['mb']:>6.0f} MB  {'whole' if not piece else f'{piece:g} MB pieces':>14}: "
          f"{row['seconds'] * 1e3:8.0f} ms  {row['mb_per_s']:6.0f} MB/s  frontend CPU "
          f"{row['frontend_cpu'] * 1e3:6.0f} ms  worker CPU {row['worker_cpu'] * 1e3:6.0f} ms  "
          f"bytes {'ok' if row['bytes_checked'] else 'WRONG'}", flush=True)


def sizes(args):
    return [(mb, piece) for mb in args.mb for piece in args.piece_mb if not (piece and piece >= mb)]


def run_torchserve(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        work = Path(tmp)
        store = build(work)
        env, worker = start(work, store)
        try:
            for mb, piece in sizes(args):
                rows.append(measure(mb, piece, args.repeats, [frontend_pid(work)], worker))
                report(rows[-1])
        finally:
            subprocess.run([str(Path(sys.executable).parent / "torchserve"), "--stop"], env=env, cwd=work,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return rows


def run_ray(args, port: int = 8394) -> list[dict]:
    from bench_ray_bytes import RayBytes, wait_ready

    app = RayBytes(port)
    rows = []
    try:
        app.start()
        wait_ready(port)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/predictions/bytes", body=json.dumps({"mb": 0.001}))
        replica = int(connection.getresponse().getheader("X-Pid"))
        for mb, piece in sizes(args):
            proxy_side, _ = app.pids(replica)
            rows.append(measure(mb, piece, args.repeats, proxy_side, replica, port, "ray"))
            report(rows[-1])
    finally:
        app.stop()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, nargs="+", default=[16, 64, 128])
    parser.add_argument("--piece-mb", type=float, nargs="+", default=[0, 1, 4, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frontends", nargs="+", choices=("torchserve", "ray"), default=["torchserve", "ray"])
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = []
    for frontend in args.frontends:
        rows += run_torchserve(args) if frontend == "torchserve" else run_ray(args)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
