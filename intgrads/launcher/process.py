"""TorchServe's processes: finding its tools, waiting until every worker is ready, stopping a run's server
and its workers, and reading its logs and keys."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..system import cmdline, pid_alive
from .management import call, management_target, read_keys
from .paths import LaunchError, RunPaths
from .tsconfig import Ports, connect_host, url_host

LOAD_ERROR_MARKER = "INTGRADS_LOAD_ERROR"
LOG_TAIL_LINES = 40


# ---------------------------------------------------------------------------------------------- processes
def find_tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    raise LaunchError(f"{name} is not installed in this environment: pip install 'intgrads[serve]' "
                      "(or run scripts/intgrads.sh, which installs it into .venv/)")


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def http_json(url: str, token: str | None = None, method: str = "GET", timeout: float = 5):
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8") or "null")


def server_pid(paths: RunPaths) -> int | None:
    try:
        pid = int(paths.pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid_alive(pid) and "org.pytorch.serve.ModelServer" in cmdline(pid):
        return pid
    return None


def log_tails(paths: RunPaths) -> str:
    parts = []
    for path in (paths.model_log, paths.ts_log, paths.stdout):
        text = tail(path)
        if text.strip():
            parts.append(f"--- last lines of {path} ---\n{text}")
    return "\n".join(parts)


def load_errors(paths: RunPaths, start_offset: int) -> list[str]:
    try:
        with open(paths.model_log, "rb") as handle:
            handle.seek(start_offset)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        if LOAD_ERROR_MARKER in line:
            found.append(line.split(LOAD_ERROR_MARKER, 1)[1].strip())
    return found


def wait_ready(paths: RunPaths, pid: int, host: str, ports: Ports, models: dict, timeout: float,
               token_auth: bool, log_offset: int, management: dict) -> dict:
    """Poll /ping and the management API (``management``: its target) until every model has its workers READY;
    returns worker info."""
    base = f"http://{url_host(connect_host(host))}"
    deadline = time.time() + timeout
    last = {}
    while True:
        if not pid_alive(pid):
            raise LaunchError("TorchServe exited during startup; see the log below (a port taken by another "
                              "program, or a bad config.properties, are the usual causes)", log_tail=log_tails(paths))
        errors = load_errors(paths, log_offset)
        if errors:
            raise LaunchError("a worker failed to load its model: " + errors[0] +
                              "\nFix the model files or flags named above and start again (if they are fine, the "
                              "archive in the model store may be damaged: add --rebuild).",
                              log_tail=f"--- last lines of {paths.model_log} ---\n{tail(paths.model_log)}")
        keys = read_keys(paths.run_dir) if token_auth else {}
        key = keys.get("management")
        ready_all = True
        try:
            if token_auth and not key:
                raise ValueError("no key file yet")
            http_json(f"{base}:{ports.inference}/ping", token=keys.get("inference"), timeout=3)
            for name, wanted in models.items():
                status, described = call(management, f"/models/{name}", token=key, timeout=5)
                info = described[0] if status == 200 and isinstance(described, list) and described else {}
                workers = info.get("workers") or []
                ready = [w for w in workers if w.get("status") == "READY"]
                last[name] = {"ready": len(ready), "wanted": wanted, "workers": workers}
                if len(ready) < wanted:
                    ready_all = False
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
            ready_all = False
        if ready_all:
            return last
        if time.time() > deadline:
            status = ", ".join(f"{n}: {v['ready']}/{v['wanted']} ready" for n, v in last.items()) or "not answering"
            raise LaunchError(f"the workers were not ready after {timeout:.0f} s ({status}); a big model on a slow "
                              "machine may need a longer --ready-timeout / --startup-timeout",
                              log_tail=log_tails(paths))
        time.sleep(0.5)


def stop_server(paths: RunPaths, quiet: bool = False, timeout: float = 60) -> bool:
    """Stop the TorchServe of this run directory and its workers; True if one was running."""
    pid = server_pid(paths)
    state = {}
    try:
        state = json.loads(paths.state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    worker_pids = set(state.get("worker_pids") or [])
    if pid is None:
        _kill_workers(worker_pids)
        left = remove_leftovers(paths)
        if not quiet:
            print(f"intgrads: no server is running for {paths.run_dir}"
                  + (f"; removed what a stopped one left ({', '.join(left)})" if left else ""))
        return False
    worker_pids |= _live_worker_pids(state, paths)
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while pid_alive(pid) and time.time() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        while pid_alive(pid) and time.time() < deadline + 10:
            time.sleep(0.2)
    _kill_workers(worker_pids)
    remove_leftovers(paths)
    if state:
        state["stopped_at"] = time.time()
        paths.state.write_text(json.dumps(state, indent=1), encoding="utf-8")
    if not quiet:
        print(f"intgrads: stopped the server on port {state.get('ports', {}).get('inference', '?')} (pid {pid})")
    return True


def remove_leftovers(paths: RunPaths) -> list[str]:
    """Remove what a server of this run directory leaves once it is gone: its pid file and keys, the uncollected
    hand-off answers and the management socket (a symbolic link in their place is removed, never followed).
    Returns the names of what was there."""
    removed = []
    for leftover in (paths.pid_file, paths.run_dir / "key_file.json", paths.handoff, paths.private):
        if not (leftover.is_symlink() or leftover.exists()):
            continue
        removed.append(leftover.name + ("/" if leftover.is_dir() and not leftover.is_symlink() else ""))
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return removed


def _live_worker_pids(state: dict, paths: RunPaths) -> set:
    pids = set()
    ports = state.get("ports") or {}
    if not ports:
        return pids
    key = read_keys(paths.run_dir).get("management") if state.get("token_auth") else None
    target = management_target(state, paths.run_dir)
    for name in state.get("models", {}):
        try:
            status, described = call(target, f"/models/{name}", token=key, timeout=3)
            for worker in (described[0].get("workers") or [] if status == 200 else []):
                if int(worker.get("pid") or 0) > 0:   # -1: a worker not started yet
                    pids.add(int(worker["pid"]))
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError, IndexError, AttributeError,
                TypeError):
            pass
    return pids


def _kill_workers(pids):
    """TorchServe's Python workers, should any outlive the frontend (only processes that are workers)."""
    alive = [pid for pid in pids if pid_alive(pid) and "model_service_worker" in cmdline(pid)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + 10
    while any(pid_alive(pid) for pid in alive) and time.time() < deadline:
        time.sleep(0.2)
    for pid in alive:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    deadline = time.time() + 5   # a killed process takes a moment to go: --stop returns when it has
    while any(pid_alive(pid) for pid in alive) and time.time() < deadline:
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- main
