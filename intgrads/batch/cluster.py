"""The Ray cluster a batch run works on: a head of its own (the default), or a running cluster (``--ray-address``).

**Its own head** lives in a private folder, ``$TMPDIR/intgrads-batch-XXXXXXXX`` (owner-only; short, as Ray's Unix
sockets need): the token (``token``, mode 0600), Ray's logs and sockets (``ray/``) and ``owner.json`` (the pids of
the driver and of its watchdog). It is started like the launcher's (``intgrads.launcher.ray_cluster``): token auth,
every port from a free block, no dashboard, its daemons in a session of their own, so that the terminal's Ctrl-C
reaches the driver alone, which then stops them in order. At the end, even after Ctrl-C or an error, the driver
stops exactly that cluster (``stop_cluster``: only the processes using its folder, nothing else of the machine's)
and removes the folder.

**When the driver is killed** (SIGKILL, no chance to clean up) its watchdog does it: a small process in its own
session (``python -m intgrads.batch.watchdog``) that reads a pipe whose other end only the driver holds. The
pipe closes when the driver dies, however it dies; the watchdog then stops the cluster, removes the temporaries
the killed workers left in the output and the folder. Should both be killed, the next batch run on this machine
stops every such cluster whose driver and watchdog are gone (:func:`sweep_stale`) before it starts its own.

**A running cluster** (``--ray-address HOST:PORT``, the GCS address that ``ray start --address`` takes) is only
joined: the run's actors leave with its driver; the cluster stays.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..engine.memory import reuse_memory_env
from ..launcher import ray_cluster
from ..launcher.paths import LaunchError
from ..system import pid_alive

PREFIX = "intgrads-batch-"
# BASE/intgrads-batch-XXXXXXXX/ray must leave room for the socket paths of a Ray head without a dashboard
MAX_BASE = ray_cluster.SOCKET_PATH_BYTES - ray_cluster.RAY_SOCKET_SUFFIX_NO_DASHBOARD - len(f"/{PREFIX}XXXXXXXX/ray")
HEAD_ARGS = ("--include-dashboard=false", "--include-log-monitor=false")


class JoinError(RuntimeError):
    """The driver could not join the Ray cluster."""


def _base() -> Path:
    base = Path(tempfile.gettempdir())
    return base if len(os.fsencode(base)) <= MAX_BASE else Path("/tmp")


def sweep_stale(base: Path | None = None) -> int:
    """Stop the own clusters of batch runs on this machine whose driver and watchdog are both gone; returns how
    many were stopped. Only this user's folders are looked at."""
    stopped = 0
    for folder in sorted((base or _base()).glob(PREFIX + "*")):
        try:
            if folder.stat().st_uid != os.getuid() or not folder.is_dir():
                continue
            owner = json.loads((folder / "owner.json").read_text(encoding="utf-8"))
            pids = [int(owner.get("driver", 0)), int(owner.get("watchdog", 0))]
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        if owner.get("host") == socket.gethostname() and not any(pid_alive(pid) for pid in pids):
            ray_cluster.stop_cluster(folder / "ray", grace=5)
            shutil.rmtree(folder, ignore_errors=True)
            stopped += 1
    return stopped


@contextlib.contextmanager
def own_head(*, cpus: int, gpus: int, output: Path, quiet: bool = False):
    """Start a Ray head of the run's own and yield its GCS address; stop it (and leave no Ray process) on the way
    out, however the run ends. The driver's environment gets the token settings before Ray is imported."""
    sweep_stale()
    folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=_base()))
    os.chmod(folder, 0o700)
    write_end = None
    try:
        token = ray_cluster.make_token(folder / "token")
        ports = ray_cluster.free_block(0)
        write_end = _start_watchdog(folder, output)
        if not quiet:
            print(f"intgrads-batch: starting a Ray head of this run's own (token auth; its files in {folder})",
                  file=sys.stderr, flush=True)
        ray_cluster.start_head(folder / "ray", ports, token, cpus=cpus, gpus=gpus, log=folder / "ray.out",
                               extra_args=HEAD_ARGS, new_session=True)
        os.environ.update(ray_cluster.ray_env(token, ports))
        yield f"127.0.0.1:{ports.gcs}"
    finally:
        disconnect()
        ray_cluster.stop_cluster(folder / "ray", grace=5)
        shutil.rmtree(folder, ignore_errors=True)
        if write_end is not None:
            os.close(write_end)   # the watchdog wakes, finds nothing left and exits


def _start_watchdog(folder: Path, output: Path) -> int:
    """Start the watchdog on a pipe whose write end (returned, not inherited by any child) only this process
    holds; record both pids in ``owner.json``."""
    read_end, write_end = os.pipe()   # not inheritable: Ray's daemons never hold the write end
    try:
        watchdog = subprocess.Popen([sys.executable, "-m", "intgrads.batch.watchdog", str(folder), str(output),
                                     str(os.getpid())], stdin=read_end, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, cwd="/", start_new_session=True)
    finally:
        os.close(read_end)
    owner = {"driver": os.getpid(), "watchdog": watchdog.pid, "host": socket.gethostname()}
    (folder / "owner.json").write_text(json.dumps(owner), encoding="utf-8")
    return write_end


def token_settings(token_file: str | None) -> None:
    """For a running cluster: its token file (``--ray-token-file``, else ``$RAY_AUTH_TOKEN_PATH``) into this
    process's environment, before Ray is imported."""
    token_file = token_file or os.environ.get("RAY_AUTH_TOKEN_PATH")
    if token_file:
        path = Path(token_file).expanduser()
        if not path.is_file():
            raise LaunchError(f"--ray-token-file {token_file}: no such file", code=2)
        os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path.resolve())})
        os.environ.pop("RAY_AUTH_TOKEN", None)


JOIN_SECONDS = 60.0
JOIN_HINT = "a cluster with token auth needs its token: --ray-token-file or $RAY_AUTH_TOKEN_PATH"
ABANDONED: list = []   # a join that did not return in time: its thread is left behind (see cli.main)


# An HTTP/2 client's first bytes (the connection preface and an empty SETTINGS frame): a GCS (gRPC) answers them
# with its own SETTINGS; an address that takes connections and never answers is told apart before ray.init.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _probe(address: str, seconds: float) -> None:
    """Raise JoinError at once when nothing listens at ``address`` (HOST:PORT), and after ``seconds`` when what
    listens never answers an HTTP/2 preface (the wait in Python, so Ctrl-C and SIGTERM end it at once; ``ray.init``
    on such an address waits in native code)."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + seconds
    try:
        connection = socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=min(10.0, seconds))
    except ValueError:
        raise JoinError(f"--ray-address {address}: write HOST:PORT (the GCS address, e.g. head:6379)") from None
    except socket.timeout:
        return   # a slow network: ray.init gets the rest of the time
    except OSError as error:
        raise JoinError(f"cannot join the Ray cluster at {address}: nothing answers there ({error.strerror or error}); "
                        "is the head running, and is this its GCS address (ray start --head's --port)?") from None
    with connection:
        try:
            connection.settimeout(max(0.1, deadline - time.monotonic()))
            connection.sendall(H2_PREFACE)
            connection.recv(1)   # a byte, or the end of the stream (a TLS server, another service): it answers
        except socket.timeout:
            raise JoinError(f"cannot join the Ray cluster at {address}: no answer within {seconds:g} s "
                            f"(--ray-timeout); {JOIN_HINT}") from None
        except OSError:
            return   # reset: ray.init says what is there


def connect(address: str, seconds: float = JOIN_SECONDS) -> dict:
    """Join the cluster at ``address`` as its driver within ``seconds`` (else JoinError), quietly (no Ray log lines
    or worker output on the terminal; Ray's errors still come as exceptions); the wait obeys Ctrl-C and SIGTERM
    (``ray.init`` runs in a thread of its own: it blocks signals and may wait for ever on an address that does not
    answer). Returns what the cluster has: ``cpus``, ``gpus``, ``nodes`` (alive) and ``min_node_cpus``."""
    os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"   # the driver's C++ notices (e.g. on actor restarts)
    deadline = time.monotonic() + seconds
    _probe(address, seconds)
    import ray

    outcome: dict = {}

    def join():
        try:
            # the workers start with glibc told to reuse freed memory (intgrads.engine.memory.REUSE_MEMORY_ENV)
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                     runtime_env={"env_vars": reuse_memory_env(os.environ)})
        except BaseException as error:   # handed to the main thread
            outcome["error"] = error

    thread = threading.Thread(target=join, name="ray-join", daemon=True)
    with _stderr_aside():   # where Ray's C++ logging announces the level it was set to, and its retries
        thread.start()
        try:
            while thread.is_alive() and time.monotonic() < deadline:
                thread.join(0.2)
        finally:
            if thread.is_alive():
                ABANDONED.append(thread)
    if thread.is_alive():
        raise JoinError(f"cannot join the Ray cluster at {address}: no answer within {seconds:g} s (--ray-timeout); "
                        f"{JOIN_HINT}")
    error = outcome.get("error")
    if isinstance(error, (ConnectionError, RuntimeError, ValueError)):
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise JoinError(f"cannot join the Ray cluster at {address}: {first} ({JOIN_HINT})")
    if error is not None:
        raise error
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    resources = ray.cluster_resources()
    node_cpus = [int(node.get("Resources", {}).get("CPU", 0)) for node in nodes]
    return {"cpus": int(resources.get("CPU", 0)), "gpus": int(resources.get("GPU", 0)), "nodes": len(nodes),
            "min_node_cpus": min([cpus for cpus in node_cpus if cpus] or [1])}


@contextlib.contextmanager
def _stderr_aside():
    """File descriptor 2 pointed at /dev/null for a moment (C++ code writes there, not to ``sys.stderr``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def disconnect() -> None:
    """Leave the cluster (a joined cluster ends this run's actors; its own head is stopped after)."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
