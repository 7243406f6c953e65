"""The Ray Serve front end under slow and hostile neighbours, on one shared Ray server (``ray_reliability_server``:
the demo model, one replica, ``-h 0.0.0.0``, ``--body-timeout 5``), and ``intgrads-batch --ray-address`` against
it and against nothing. In order: stalled uploads, the queue bound, the keys, the folder as another user, the
``--scale`` hint, the batch job's join, and last ``--stop`` (which ends the server)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

pytest.importorskip("ray")
from starlette.requests import Request  # noqa: E402 (Ray's)

from intgrads.launcher.ray_cluster import cluster_processes  # noqa: E402
from intgrads.rayserve import http  # noqa: E402

from .conftest import DEMO, RAY_BODY_SECONDS

pytestmark = pytest.mark.usefixtures("ray_reliability_server")
LONG = ("the film was slow at first but the music and the acting made every scene feel honest and warm and by the "
        "end the whole story seemed bright")
STALLED_HEAD = (b"POST /predictions/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n{\"sequence\": \"")


def _timed(url: str, **kwargs) -> tuple[float, requests.Response]:
    started = time.monotonic()
    response = requests.post(url, json={"sequence": "The food was awful.", "n_steps": 4}, timeout=120, **kwargs)
    return time.monotonic() - started, response


def _stall(port: int, count: int, path: bytes = b"/predictions/demo") -> list:
    sockets = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=30)
        connection.sendall(STALLED_HEAD.replace(b"/predictions/demo", path))
        sockets.append(connection)
    return sockets


def _answer_and_close(connection: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What the server sends a stalled upload within ``seconds``, and whether it closed the connection."""
    connection.settimeout(seconds)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
        return received, True
    except (socket.timeout, TimeoutError):
        return received, False
    except ConnectionResetError:
        return received, True


def test_stalled_uploads_cost_sockets_not_the_replica(ray_reliability_server, tally):
    """4 and then 50 connections send headers and part of a body and go quiet; meanwhile a normal request answers in
    its usual time (one replica: before, every stalled upload held a replica's slot). Each stalled one gets a 408
    JSON and is closed after --body-timeout."""
    server = ray_reliability_server
    case = tally("ray 1 slow uploads").case
    usual = min(_timed(server.url(DEMO))[0] for _ in range(3))
    for count in (4, 50):
        stalled = _stall(server.port, count - 2) + _stall(server.port, 2, b"/explanations/demo")
        try:
            seconds, response = _timed(server.url(DEMO))
            assert case(response.status_code == 200 and seconds < usual * 3 + 2), (count, seconds, usual)
            started = time.monotonic()
            answers = [_answer_and_close(connection, RAY_BODY_SECONDS + 20) for connection in stalled]
            waited = time.monotonic() - started
        finally:
            for connection in stalled:
                connection.close()
        closed = [body for body, done in answers if done]
        assert case(len(closed) == count and waited < RAY_BODY_SECONDS + 20), (count, len(closed), waited)
        assert case(all(b" 408 " in body.split(b"\r\n")[0] and b"did not arrive within" in body for body in closed)), \
            closed[0][:300]
        print(f"\n[ray] {count} stalled uploads: a request answered in {seconds:.2f} s (usual {usual:.2f} s); "
              f"all closed with 408 after {waited:.1f} s more")


def test_the_queue_bound_is_per_replica_with_our_503(ray_reliability_server, tally):
    """One replica busy with a long request; 110 more come at once: 100 wait (README: 100 per replica) and are
    answered in turn (each a cheap 413: over the work budget), 10 get our JSON 503 with Retry-After at once."""
    server = ray_reliability_server
    case = tally("ray 2 queue").case
    from intgrads.launcher.ray_deploy import MAX_QUEUED

    url = server.url(DEMO)
    with ThreadPoolExecutor(max_workers=MAX_QUEUED + 11) as pool:
        # long enough to outlast the 110 arrivals on a loaded machine (at 100 steps, up to 4 came after it ended)
        long = pool.submit(requests.post, url, json={"sequence": LONG, "n_steps": 300}, timeout=600)
        time.sleep(1.0)   # its turn taken
        started = time.monotonic()
        fillers = [pool.submit(lambda: (requests.post(url, json={"sequence": "good", "n_steps": 100000}, timeout=600),
                                        time.monotonic() - started)) for _ in range(MAX_QUEUED + 10)]
        results = [future.result() for future in fillers]
        long_response = long.result()
    busy = [(response, seconds) for response, seconds in results if response.status_code == 503]
    waited = [response for response, _ in results if response.status_code == 413]   # over the work budget
    assert case(long_response.status_code == 200), long_response.text[:300]
    assert case(len(busy) == 10 and len(waited) == MAX_QUEUED), [r.status_code for r, _ in results]
    first = busy[0][0]
    assert case(first.headers.get("Content-Type", "").startswith("application/json")
                and first.json()["status"] == 503 and "busy" in first.json()["error"]
                and int(first.headers["Retry-After"]) >= 1), (first.headers, first.text)
    counted = re.compile(r'^IntgradsRequests\{ModelName="demo",Status="503"\} 10(\.0)?$', re.M)
    for _ in range(20):   # the 503s are counted (sent to the metrics actor without waiting)
        metrics = requests.get(f"{server.base}/metrics", timeout=60).text
        if counted.search(metrics):
            break
        time.sleep(0.5)
    assert case(counted.search(metrics)), metrics[:1500]
    print(f"\n[ray] queue: {len(waited)} waited, {len(busy)} got 503 (Retry-After {first.headers['Retry-After']} s) "
          f"within {max(s for _, s in busy):.2f} s")


def _request(headers: dict, client: str = "127.0.0.1") -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "client": (client, 1234),
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})


def test_keys_forwarded_callers_and_the_bearer_scheme(ray_reliability_server, tally):
    """A loopback caller needs no key; one that says it was forwarded (X-Forwarded-For, no --trusted-proxy) does;
    the scheme is case-insensitive. With --trusted-proxy: the proxy's forwarded callers are judged by the address
    it saw, and the proxy's own requests without the header need the key."""
    server = ray_reliability_server
    case = tally("ray 6 keys, hints").case
    url = server.url(DEMO)
    assert case(_timed(url)[1].status_code == 200)
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    refused = _timed(url, headers=forwarded)[1]
    assert case(refused.status_code == 401 and "inference key" in refused.json()["error"]), refused.text
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert case(_timed(url, headers={**forwarded, "Authorization": f"{scheme} {server.key}"})[1].status_code
                    == 200), scheme
    assert case(_timed(url, headers={**forwarded, "Authorization": "Basic " + server.key})[1].status_code == 401)
    trusted = ("127.0.0.1",)
    assert case(not http.is_local(_request({}), trusted))   # the proxy relays someone unnamed
    assert case(http.is_local(_request({"X-Forwarded-For": "127.0.0.1"}), trusted))
    assert case(not http.is_local(_request({"X-Forwarded-For": "127.0.0.1, 203.0.113.7"}), trusted))
    assert case(not http.is_local(_request({"X-Forwarded-For": "127.0.0.1"})))
    assert case(http.is_local(_request({})) and not http.is_local(_request({}, "203.0.113.7")))


def _as_nobody(*command) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command],
                          capture_output=True, text=True, timeout=60)


def test_the_ray_folder_is_private_to_the_servers_user(ray_reliability_server, tmp_path, tally):
    """As another user (nobody): nothing under the run's Ray folder can be listed, read, moved or planted; the
    same user lists a world-readable folder beside it (the probe works). Ray opened its own temp dir (0777):
    its owner-only parent is what keeps it."""
    if os.getuid() != 0 or not shutil.which("setpriv") or _as_nobody("true").returncode != 0:
        pytest.skip("needs root and setpriv to act as another user")
    case = tally("ray 3 folder").case
    folder = Path(ray_reliability_server.state()["ray_dir"])
    parent = folder.parent
    assert case(stat.S_IMODE(parent.stat().st_mode) == 0o700 and parent.stat().st_uid == os.getuid()), parent
    sockets = sorted(folder.glob("session_*/sockets"))[0]
    control = parent.parent / f"intgrads-probe-{os.getpid()}"
    control.mkdir(mode=0o755, exist_ok=True)
    try:
        assert case(_as_nobody("ls", str(control)).returncode == 0)
    finally:
        control.rmdir()
    for command in (("ls", str(parent)), ("ls", str(folder)), ("ls", str(sockets)),
                    ("cat", str(folder / "session_latest" / "logs" / "raylet.out")),
                    ("mv", str(sockets / "raylet"), "/tmp/moved-raylet"), ("touch", str(folder / "planted")),
                    ("ln", "-s", "/etc/passwd", str(sockets / "planted")), ("mkdir", str(folder / "session_x"))):
        result = _as_nobody(*command)
        assert case(result.returncode != 0 and "Permission denied" in result.stderr), (command, result)
    assert case((sockets / "raylet").exists() and not (folder / "planted").exists())


def test_the_scale_hint_names_an_address_another_machine_can_use(ray_reliability_server, tally):
    """--scale past the cluster's CPUs: refused with `ray start --address` at this machine's address (not
    127.0.0.1) and the token."""
    from intgrads.launcher.tsconfig import public_host

    server = ray_reliability_server
    case = tally("ray 6 keys, hints").case
    result = subprocess.run([sys.executable, "-m", "intgrads.launcher", "--scale", f"{DEMO}=2", "-p", str(server.port),
                             "--run-dir", str(server.run_dir)], cwd=server.home, env=server.env, capture_output=True,
                            text=True, timeout=300)
    output = result.stdout + result.stderr
    gcs_port = server.state()["gcs"].rsplit(":", 1)[1]
    if "fit this machine" in output:
        pytest.skip("this machine's memory refused the replica before the cluster's CPUs did")
    assert case(result.returncode == 2 and f"ray start --address {public_host('0.0.0.0')}:{gcs_port}" in output
                and "RAY_AUTH_MODE=token" in output and "127.0.0.1" not in output), output


@pytest.fixture(scope="module")
def blackhole():
    """A port that accepts connections and never answers (a wrong address that does not refuse)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _batch(store: Path, work: Path, args, output=None) -> subprocess.Popen:
    """intgrads-batch on the demo model of ``store``, one sentence, into ``output`` (default work/out); SIGINT as
    a terminal sends it (a shell that started these tests in the background made them ignore it)."""
    from batch.conftest import BATCH, batch_env

    work.mkdir(exist_ok=True)
    (work / "in.txt").write_text("A fine film.\n")
    return subprocess.Popen(BATCH + ["--demo", "--model-store", str(store), str(work / "in.txt"), "-o",
                                     str(output or work / "out"), "--no-progress", *map(str, args)],
                            env=batch_env(work), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_own_session_with_sigint)


def _own_session_with_sigint():
    """Each run in a session of its own (no signal meant for another reaches it), with SIGINT as a terminal
    sends it (a shell that started these tests in the background made them ignore it)."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_the_batch_job_joins_nothing_with_a_clear_error_in_bounded_time(ray_reliability_server, blackhole, tmp_path,
                                                                        tally):
    """--ray-address to a port that refuses: named at once; to one that never answers, and to the server's cluster
    with a wrong token: a clear error by --ray-timeout; SIGTERM and SIGINT while it waits: it ends at once (143,
    130) and leaves the output unlocked. -o at a file, a folder that cannot be made, a dangling symbolic link: exit
    2 with a message, nothing made through the link. (All at once: each run's own start is most of its time.)"""
    store, gcs = ray_reliability_server.model_store, ray_reliability_server.state()["gcs"]
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    refused_address = f"127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    afile = tmp_path / "afile"
    afile.write_text("x")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    joins = {"refused": (["--ray-address", refused_address], "nothing answers there"),
             "silent": (["--ray-address", blackhole, "--ray-timeout", 4], "no answer within 4 s"),
             "wrong token": (["--ray-address", gcs, "--ray-token-file", wrong, "--ray-timeout", 4], "--ray-token-file")}
    outputs = {"file": (afile, "is a file"), "unmakeable": ("/proc/intgrads/out", "cannot make"),
               "dangling link": (dangling, "symbolic link")}
    signals = {"SIGTERM": (signal.SIGTERM, 143), "SIGINT": (signal.SIGINT, 130)}
    started = time.monotonic()
    runs = {label: _batch(store, tmp_path / label, args) for label, (args, _) in joins.items()}
    runs.update({label: _batch(store, tmp_path / label, [], output) for label, (output, _) in outputs.items()})
    runs.update({label: _batch(store, tmp_path / label, ["--ray-address", blackhole, "--ray-timeout", 300])
                 for label in signals})
    try:
        _check_batch_runs(runs, joins, outputs, signals, tmp_path, started, tally)
    finally:
        for process in runs.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


def _check_batch_runs(runs, joins, outputs, signals, tmp_path, started, tally):
    for label, (how, code) in signals.items():
        lock = tmp_path / label / "out" / ".intgrads-client.lock"
        deadline = time.monotonic() + 180
        while not lock.exists() and time.monotonic() < deadline and runs[label].poll() is None:
            time.sleep(0.2)
        time.sleep(1.5)   # inside the join now
        sent = time.monotonic()
        runs[label].send_signal(how)
        out, err = runs[label].communicate(timeout=60)
        assert tally("ray 5 batch job").case(
            runs[label].returncode == code and time.monotonic() - sent < 15 and "Traceback" not in err
            and not lock.exists()), (label, runs[label].returncode, err[-2000:])
    for label, (_, words) in {**joins, **outputs}.items():
        out, err = runs[label].communicate(timeout=240)
        seconds = time.monotonic() - started
        want = 1 if label in joins else 2
        assert tally("ray 5 batch job").case(
            runs[label].returncode == want and words in err and "Traceback" not in err and seconds < 120
            and not (tmp_path / label / "out" / ".intgrads-client.lock").exists()), \
            (label, runs[label].returncode, seconds, err[-2000:])
        print(f"\n[ray] batch, {label}: exit {runs[label].returncode} by {seconds:.1f} s: {err.strip()[-150:]}")
    assert tally("ray 5 batch job").case(not (tmp_path / "nowhere").exists())


def test_stop_ends_only_the_runs_processes(ray_reliability_server, tally):
    """Last: a `sleep` working in the run's Ray folder and a `tail -f` of its raylet log (this user's, as the
    issue's were) survive --stop; no process of the cluster is left."""
    server = ray_reliability_server
    case = tally("ray 4 stop").case
    folder = Path(server.state()["ray_dir"])
    log = folder / "session_latest" / "logs" / "raylet.out"
    sleeper = subprocess.Popen(["sleep", "600"], cwd=folder)
    tail = subprocess.Popen(["tail", "-f", str(log)], cwd=folder, stdout=subprocess.DEVNULL)
    shell = subprocess.Popen(["bash", "-c", "sleep 600 & wait"], cwd=folder, start_new_session=True)
    try:
        time.sleep(0.5)
        assert cluster_processes(folder)
        stopped = server.stop()
        assert case(stopped.returncode == 0 and "stopped the Ray server" in stopped.stdout), stopped.stdout
        assert case(all(process.poll() is None for process in (sleeper, tail, shell))), \
            [process.poll() for process in (sleeper, tail, shell)]
        assert case(cluster_processes(folder) == {})
        assert case(not folder.parent.exists() or str(folder).startswith(str(server.run_dir)))
    finally:
        os.killpg(shell.pid, signal.SIGKILL)
        for process in (sleeper, tail, shell):
            process.kill()
            process.wait()
