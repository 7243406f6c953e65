"""A Ray cluster of the launcher's own, kept to its run directory: started with token auth, stopped without
touching any other Ray on the machine.

- **Token.** ``RUN/private/ray_token`` (owner-only), made here; every Ray process of the run gets
  ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` pointing at it, so the GCS, the workers and the dashboard
  with its Serve REST API all ask for it, and nothing is written to ``~/.ray``.
- **Ports.** Every port Ray opens (GCS, dashboard, agents, object and node managers, metrics, workers) is taken
  from one free block, so two runs never meet; the dashboard listens on 127.0.0.1 only.
- **Folder.** Ray makes its temp dir and every folder in it world-writable (0777, for several users of one
  machine); it is therefore kept inside a folder of the run's own, owner-only (``private_parent``), so no other
  user can list, plant or move anything in it.
- **Stop.** ``ray stop`` kills every Ray process of the machine. :func:`stop_cluster` kills only this user's
  processes of the cluster kept in the folder: those whose command line gives the folder, or a folder in it, as an
  option's value (``--session-dir=...``, ``--temp-dir=...``: every Ray daemon of a node, the head's and a joined
  node's), those of the Ray session the head's ``ray start`` made (its name ends in that session's id), and their
  children (the workers); raylet first, gcs_server last, SIGKILL after a grace period. A process that merely works
  in the folder or reads a file there (a shell, a ``tail -f`` of a log) is not one of them.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..system import bind_error, quiet_ports
from .paths import LaunchError

RAY_PORTS = ("gcs", "dashboard", "client", "node_manager", "object_manager", "metrics_export", "agent_listen",
             "agent_grpc", "runtime_env_agent", "autoscaler_metrics", "dashboard_metrics")
WORKER_PORTS = 100

# A Ray folder's Unix sockets sit at FOLDER/session_<date>_<time>_<us>_<pid>/sockets/NAME, and sun_path holds 107
# bytes. Past the folder: "/session_" + 26 (date, time, microseconds) + "_" + 7 (the largest pid) + "/sockets/"
# + NAME: "dash_TaskEventsHead" (the longest dashboard module) makes 71 bytes; without a dashboard the longest
# NAME is "plasma_store" (the object store), 64 bytes.
SOCKET_PATH_BYTES = 107
RAY_SOCKET_SUFFIX = 71
RAY_SOCKET_SUFFIX_NO_DASHBOARD = 64
MAX_RAY_FOLDER = SOCKET_PATH_BYTES - RAY_SOCKET_SUFFIX


def short_private_folder(prefix: str, room: int = 0) -> Path:
    """A new owner-only folder named ``prefix``..., in the temp folder, or in /tmp when the temp folder's
    path would leave it (with ``room`` bytes more for what goes in it) too long for Ray's sockets."""
    base = tempfile.gettempdir()
    if len(os.fsencode(os.path.join(base, prefix + "x" * 8))) + room > MAX_RAY_FOLDER:
        base = "/tmp"
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    os.chmod(folder, 0o700)
    return folder


BLOCK = 128


@dataclass
class RayPorts:
    """Ray's ports, from ``base`` up: the named ones first, then ``WORKER_PORTS`` for workers."""

    base: int

    def __getattr__(self, name):
        if name in RAY_PORTS:
            return self.base + RAY_PORTS.index(name)
        raise AttributeError(name)

    @property
    def workers(self) -> tuple[int, int]:
        return self.base + 20, self.base + 20 + WORKER_PORTS - 1


def port_free(port: int, host: str = "") -> bool:
    """Nothing holds ``port`` on ``host`` (every interface by default) that would stop a server binding it."""
    return bind_error(port, host) is None


def free_block(avoid: int) -> RayPorts:
    """A block of BLOCK free ports (on every interface) away from ``avoid``, below the ephemeral range, and
    overlapping no other run's block. A running block binds a port within its first 8 (a head's GCS at +0, a
    joined node's node manager at +3) and its workers' only when a worker starts; bases are 8 apart, so the
    BLOCK - 1 ports below a base must be free too."""
    import random

    rng = random.Random(os.getpid() ^ time.time_ns())
    low, end = quiet_ports()
    for _ in range(200):
        base = rng.randrange(low, end - BLOCK, 8)
        if abs(base - avoid) > BLOCK and all(port_free(port) for port in range(base - BLOCK + 1, base + BLOCK)):
            return RayPorts(base)
    raise LaunchError("no block of free ports for Ray found")


def make_token(path: Path) -> Path:
    """A new random token in ``path`` (mode 0600, in an owner-only folder)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path


def ray_env(token_path: Path | None, ports: RayPorts | None = None) -> dict:
    """The environment of Ray's processes and of the launcher's calls to them: token auth on, no usage stats,
    no 30 s drain on stop; a run's own metric ports."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
                "PYTHONUNBUFFERED": "1"})
    if token_path is not None:
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)})
    if ports is not None:
        env.update({"AUTOSCALER_METRIC_PORT": str(ports.autoscaler_metrics),
                    "DASHBOARD_METRIC_PORT": str(ports.dashboard_metrics)})
    return env


def ray_command() -> str:
    found = Path(sys.executable).with_name("ray")
    if not found.is_file():
        raise LaunchError("Ray is not installed in this environment: pip install 'intgrads[ray]' (or run "
                          "scripts/intgrads.sh --frontend ray, which installs it into .venv/)", code=2)
    return str(found)


def private_parent(folder: Path) -> None:
    """Make ``folder``'s parent an owner-only folder of this user's (Ray opens ``folder`` itself to everyone)."""
    parent = folder.parent
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if parent.is_symlink() or not parent.is_dir() or parent.lstat().st_uid != os.getuid():
        raise LaunchError(f"{parent} is not a folder of this user's: Ray's files cannot be kept private there")
    os.chmod(parent, 0o700)


def start_head(folder: Path, ports: RayPorts, token_path: Path, *, cpus: int, gpus: int, log, extra_args=(),
               new_session: bool = True, environ: dict | None = None) -> None:
    """``ray start --head`` with every port from ``ports``, its temp dir ``folder`` (logs, sockets; its parent
    made owner-only), the dashboard on loopback (plus ``extra_args``); raises LaunchError with the tail of its
    output when it fails. Ray's daemons run in a session of their own (whose id names the Ray session, which
    :func:`stop_cluster` reads), out of reach of the terminal's Ctrl-C (the caller stops them in order)."""
    private_parent(folder)
    folder.mkdir(mode=0o700, exist_ok=True)
    low, high = ports.workers
    command = [ray_command(), "start", "--head", "--temp-dir", str(folder), "--port", str(ports.gcs),
               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(ports.dashboard),
               "--ray-client-server-port", str(ports.client), "--node-manager-port", str(ports.node_manager),
               "--object-manager-port", str(ports.object_manager), "--metrics-export-port", str(ports.metrics_export),
               "--dashboard-agent-listen-port", str(ports.agent_listen),
               "--dashboard-agent-grpc-port", str(ports.agent_grpc),
               "--runtime-env-agent-port", str(ports.runtime_env_agent),
               "--min-worker-port", str(low), "--max-worker-port", str(high),
               "--num-cpus", str(cpus), "--num-gpus", str(gpus), "--disable-usage-stats", *extra_args]
    with open(log, "ab") as out:
        result = subprocess.run(command, cwd=folder, env={**ray_env(token_path, ports), **(environ or {})}, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=300,
                                start_new_session=new_session)
    if result.returncode != 0:
        raise LaunchError(f"Ray's head did not start (exit {result.returncode})", log_tail=_tail(log))


def _tail(path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------- stopping
def _stat(pid: int):
    """(parent pid, state) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[0]
    except (OSError, IndexError, ValueError):
        return None


def _owner(pid: int):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _argv(pid: int) -> list:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [os.fsdecode(arg) for arg in handle.read().split(b"\0") if arg]
    except OSError:
        return []


def _session_id(pid: int):
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


# a Ray session's name ends in the pid of the ray start that made it, the leader of its daemons' session
SESSION_OPTION = re.compile(r"^--session[-_](?:name|dir)=(?:.*/)?session_[0-9_-]+_(\d+)/?$")


def cluster_processes(folder: Path) -> dict[int, str]:
    """{pid: name} of this user's processes of the Ray cluster kept in ``folder`` (see the module docstring)."""
    prefix = str(folder.resolve()).rstrip("/") + "/"
    me, uid = os.getpid(), os.getuid()
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and _owner(int(entry)) == uid:
            info = _stat(int(entry))
            if info and info[1] != "Z":
                table[int(entry)] = info
    found, sessions = set(), set()
    for pid in table:
        options = [arg for arg in _argv(pid) if arg.startswith("--") and "=" in arg]
        if any((arg.split("=", 1)[1].rstrip("/") + "/").startswith(prefix) for arg in options):
            found.add(pid)
            sessions.update(int(match.group(1)) for match in map(SESSION_OPTION.match, options) if match)
    if sessions:
        found.update(pid for pid in table if _session_id(pid) in sessions)
    children: dict = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    names = {}
    for pid in found:
        try:
            names[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            pass
    return names


def _signal(pids, how):
    for pid in pids:
        try:
            os.kill(pid, how)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_gone(pids, seconds: float) -> list:
    deadline = time.time() + seconds
    while True:
        alive = [pid for pid in pids if (_stat(pid) or (0, "Z"))[1] != "Z"]
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.1)


def stop_cluster(folder: Path, grace: float = 10.0) -> int:
    """Stop the Ray cluster kept in ``folder`` (and only it); returns how many processes were ended."""
    seen = set()
    for stage in ("raylet", None, "gcs_server"):
        pids = [pid for pid, name in cluster_processes(folder).items()
                if (name == stage if stage else name not in ("raylet", "gcs_server"))]
        seen.update(pids)
        _signal(pids, signal.SIGTERM)
        _signal(_wait_gone(pids, grace / 3), signal.SIGKILL)
    for _ in range(20):   # anything started meanwhile
        left = cluster_processes(folder)
        if not left:
            break
        seen.update(left)
        _signal(left, signal.SIGKILL)
        _wait_gone(list(left), 2)
    return len(seen)
