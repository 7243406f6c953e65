"""TorchServe's management API, guarded, and the launcher's scale command.

A server on loopback runs without token auth, so that the curl stays simple. Its management API (scaling,
model changes) then listens on a Unix socket, ``RUN_DIR/private/management.sock``, inside a directory only
the user who started the server can enter. Other local users can't reach it, and there is no TCP port to
connect to. A server bound elsewhere keeps a TCP management port behind TorchServe's management key.

``intgrads --scale NAME=N -p PORT`` scales a model through that API. It refuses more workers than the
machine's memory holds: each worker's resident memory is measured now (its ``VmRSS``), and the ceiling is

    ceiling = current workers + floor(0.8 * MemAvailable / largest worker RSS)

(at most ``MAX_WORKERS_PER_MODEL``), so a scale request can't exhaust the machine.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import urllib.parse
from pathlib import Path

from ..system import pid_alive, proc_bytes
from .paths import LaunchError, RunPaths
from .tsconfig import connect_host, url_host

SOCKET_NAME = "management.sock"
MAX_WORKERS_PER_MODEL = 64
MEMORY_SHARE = 0.8


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (the host name in requests is only a placeholder)."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def read_keys(run_dir: Path) -> dict:
    """TorchServe's keys of a run (key_file.json): {"management", "inference", "API"}; {} when there are none."""
    try:
        data = json.loads((run_dir / "key_file.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {kind: (data.get(kind) or {}).get("key") for kind in ("management", "inference", "API")}


def management_target(state: dict, run_dir: Path) -> dict:
    """Where a run's management API listens: {"socket": path} or {"url": base, "token_auth": bool}."""
    if state.get("management_socket"):
        return {"socket": state["management_socket"]}
    host = url_host(connect_host(state.get("host", "127.0.0.1")))
    return {"url": f"http://{host}:{(state.get('ports') or {}).get('management')}",
            "token_auth": bool(state.get("token_auth")), "run_dir": str(run_dir)}


def call(target: dict, path: str, method: str = "GET", token: str | None = None, timeout: float = 30):
    """(status, decoded JSON or text) of one management request."""
    if "socket" in target:
        connection = _UnixConnection(target["socket"], timeout)
    else:
        parsed = urllib.parse.urlsplit(target["url"])
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        body = response.read().decode("utf-8", errors="replace")
    finally:
        connection.close()
    try:
        return response.status, json.loads(body or "null")
    except ValueError:
        return response.status, body


def prepare_socket_dir(paths: RunPaths) -> Path:
    """RUN_DIR/private, owner-only, with no stale socket in it; returns the socket's path."""
    private = paths.private
    private.mkdir(mode=0o700, exist_ok=True)
    os.chmod(private, 0o700)
    info = private.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise LaunchError(f"{private} is not a directory of this user's: remove it and start again", code=2)
    (private / SOCKET_NAME).unlink(missing_ok=True)
    return private / SOCKET_NAME


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS), 0 when it is gone."""
    return proc_bytes(f"/proc/{pid}/status", "VmRSS") or 0


def mem_available() -> int:
    return proc_bytes("/proc/meminfo", "MemAvailable") or 0


def worker_ceiling(worker_pids: list[int], available: int | None = None) -> tuple[int, int]:
    """(most workers this model may have, largest worker RSS in bytes) from the workers running now."""
    largest = max((rss_bytes(pid) for pid in worker_pids), default=0)
    available = mem_available() if available is None else available
    if largest <= 0:
        return max(1, len(worker_pids)), 0
    extra = int(MEMORY_SHARE * available // largest)
    return max(1, min(MAX_WORKERS_PER_MODEL, len(worker_pids) + extra)), largest


def scale(paths: RunPaths, spec: str) -> str:
    """``NAME=N``: scale model NAME of the run in ``paths`` to N workers (synchronously); returns a summary."""
    name, _, count = spec.partition("=")
    if not name or not count.isdigit() or int(count) < 1:
        raise LaunchError(f"--scale {spec!r}: write MODEL=N with N at least 1, e.g. --scale demo=2", code=2)
    wanted = int(count)
    try:
        state = json.loads(paths.state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise LaunchError(f"no server was started for {paths.run_dir}: start one first (or give -p PORT)") from None
    if not pid_alive(int(state.get("pid") or 0)) or state.get("stopped_at"):
        raise LaunchError(f"the server of {paths.run_dir} is not running")
    if name not in (state.get("models") or {}):
        raise LaunchError(f"--scale: no model {name!r} here; it serves {', '.join(state.get('models') or [])}",
                          code=2)
    target = management_target(state, paths.run_dir)
    token = read_keys(paths.run_dir).get("management") if target.get("token_auth") else None
    status, described = call(target, f"/models/{name}", token=token)
    workers = [int(w["pid"]) for w in (described[0].get("workers") or [])
               if status == 200 and int(w.get("pid") or 0) > 0]
    ceiling, largest = worker_ceiling(workers)
    if wanted > ceiling:
        raise LaunchError(
            f"--scale {name}={wanted}: at most {ceiling} worker(s) fit this machine now (each worker of {name} "
            f"holds ~{largest / 1e9:.2f} GB, {mem_available() / 1e9:.1f} GB available, {MEMORY_SHARE:.0%} of it "
            f"usable, {MAX_WORKERS_PER_MODEL} at most)", code=2)
    status, body = call(target, f"/models/{name}?min_worker={wanted}&max_worker={wanted}&synchronous=true",
                        method="PUT", token=token, timeout=600)
    if status != 200:
        raise LaunchError(f"TorchServe refused to scale {name} to {wanted} (HTTP {status}): {body}")
    return f"intgrads: {name} scaled to {wanted} worker(s) (at most {ceiling} fit this machine now)"

