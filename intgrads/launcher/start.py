"""Starting a server: check the flags and the machine, build the archives, write the run's config, start
TorchServe on the Java found, wait until every worker is ready, print the curl (and stay attached with
``--foreground``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..system import JavaNotFound, find_java, pid_alive, usable_cores
from .archive import build_archive
from .cli import check_flags, resolve_workers
from .management import SOCKET_NAME, management_target, prepare_socket_dir
from .paths import LaunchError, RunPaths, default_config_properties, program, project_home, run_paths
from .process import find_tool, log_tails, read_keys, server_pid, stop_server, wait_ready
from .specs import model_specs
from .tsconfig import (Ports, check_ports_free, choose_ports, is_loopback, public_host, read_properties, url_host,
                       write_run_config)

MAX_SOCKET_PATH = 107   # sun_path holds 108 bytes with the final NUL
EXAMPLE_SENTENCE = "This is the sequence that you want to get the sentiment of"


@dataclass
class Launch:
    """What one start decided: where it runs, what it serves, and how."""

    args: object
    paths: RunPaths
    model_store: Path
    host: str
    token_auth: bool
    ports: Ports
    specs: list
    workers: int
    java: object
    archiver: str
    torchserve: str
    props: dict = field(default_factory=dict)
    pid: int | None = None
    log_offset: int = 0
    started: float = 0.0
    state: dict = field(default_factory=dict)
    management_socket: Path | None = None   # the management API's Unix socket (loopback servers)


def start(args) -> int:
    """The whole start; returns the exit status."""
    launch = prepare(args)
    build_and_configure(launch)
    launch_torchserve(launch)
    info = wait_for_workers(launch)
    print_ready(launch, info)
    return run_foreground(launch) if args.foreground else 0


def prepare(args) -> Launch:
    """Check flags, ports, tools, Java and GPUs; resolve the models. Nothing is written yet."""
    home = project_home()
    paths = run_paths(args, home)
    model_store = Path(args.model_store).expanduser().resolve() if args.model_store else home / "model_store"
    host = args.host or "127.0.0.1"
    check_flags(args)
    ports = choose_ports(args)
    # TorchServe's worker sockets live in the run's temp folder, the management socket in its private folder
    for socket_path in (paths.tmp / ".ts.sock.65535", paths.private / SOCKET_NAME):
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
            raise LaunchError(f"the run directory {paths.run_dir} is too deep for TorchServe's worker sockets "
                              f"({len(os.fsencode(socket_path))} bytes, at most {MAX_SOCKET_PATH} on this system): "
                              "give a shorter --run-dir", code=2)
    refuse_planted(paths)
    running = server_pid(paths)
    if running:
        raise LaunchError(f"an intgrads server is already running for {paths.run_dir} (pid {running}): stop it with "
                          f"{program()} --stop -p {args.port}, or pick another -p", code=1)
    archiver = find_tool("torch-model-archiver")
    torchserve = find_tool("torchserve")
    try:
        java = find_java()
    except JavaNotFound as error:
        raise LaunchError(str(error)) from None
    check_ports_free(host, ports)
    if args.cuda:
        check_cuda(args)
    model_store.mkdir(parents=True, exist_ok=True)
    specs = model_specs(args, model_store)
    workers = resolve_workers(args, len(specs))
    return Launch(args=args, paths=paths, model_store=model_store, host=host, token_auth=not is_loopback(host),
                  ports=ports, specs=specs, workers=workers, java=java, archiver=archiver,
                  torchserve=torchserve)


def build_and_configure(launch: Launch):
    """Build the archives and write the run's config.properties."""
    args, paths = launch.args, launch.paths
    base_config = Path(args.ts_config).expanduser() if args.ts_config else default_config_properties()
    if args.ts_config and not base_config.is_file():
        raise LaunchError(f"--ts-config {args.ts_config}: no such file", code=2)
    base_props = read_properties(base_config) if base_config else {}
    mars = [build_archive(spec, args, launch.model_store, base_props, launch.archiver)[0].name for spec in launch.specs]
    for path in (paths.run_dir, paths.tmp, paths.logs):
        path.mkdir(parents=True, exist_ok=True)
    (paths.run_dir / "key_file.json").unlink(missing_ok=True)
    shutil.rmtree(paths.handoff, ignore_errors=True)   # answers a previous run left uncollected
    if handoff_enabled(launch):
        paths.handoff.mkdir(mode=0o700)
        os.chmod(paths.handoff, 0o700)
    shutil.rmtree(paths.private, ignore_errors=True)
    launch.management_socket = None if launch.token_auth else prepare_socket_dir(paths)
    launch.props = write_run_config(paths.config, base_props, host=launch.host, ports=launch.ports,
                                    model_store=launch.model_store, mar_names=mars, token_auth=launch.token_auth,
                                    args=args, source=str(base_config) if base_config else "built-in defaults",
                                    management_socket=launch.management_socket)


def refuse_planted(paths):
    """The run directory's private folders (handoff/, private/) must be real directories of this user's, or not
    there: a symbolic link or someone else's folder in their place is refused, neither followed nor removed."""
    for folder in (paths.handoff, paths.private):
        if not (folder.is_symlink() or folder.exists()):
            continue
        info = folder.lstat()
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else (
                "not a directory" if not stat.S_ISDIR(info.st_mode) else f"owned by uid {info.st_uid}")
            raise LaunchError(f"{folder} is {what}: the server keeps private files there and will not use it; "
                              f"remove it, or give another --run-dir", code=2)


def torchserve_env(launch: Launch) -> dict:
    """TorchServe's environment: the run's temp and log folders, the Java found, the workers' threads."""
    threads = max(1, usable_cores() // (launch.workers * len(launch.specs)))
    env = dict(os.environ)
    env.update({"TMPDIR": str(launch.paths.tmp), "TEMP": str(launch.paths.tmp), "LOG_LOCATION": str(launch.paths.logs),
                "METRICS_LOCATION": str(launch.paths.logs), "PYTHONUNBUFFERED": "1",
                "JAVA_HOME": str(launch.java.home),
                "PATH": str(launch.java.home / "bin") + os.pathsep + env.get("PATH", ""),
                "INTGRADS_TORCH_THREADS": os.environ.get("INTGRADS_TORCH_THREADS", str(threads)),
                "INTGRADS_MAX_RESPONSE_BYTES": launch.props.get("max_response_size", "1073741824"),
                "TS_DECODE_INPUT_REQUEST": launch.props.get("decode_input_request", "false")})
    env.pop("TS_CONFIG_FILE", None)
    for name in ("INTGRADS_HANDOFF_DIR", "INTGRADS_HANDOFF_MAX_BYTES"):
        env.pop(name, None)
    if handoff_enabled(launch):
        env.update({"INTGRADS_HANDOFF_DIR": str(launch.paths.handoff),
                    "INTGRADS_HANDOFF_MAX_BYTES": str(launch.args.handoff_max_bytes)})
    return env


def handoff_enabled(launch: Launch) -> bool:
    """Answers as files only for a server on loopback (its clients share its machine) and a positive bound."""
    return not launch.token_auth and is_loopback(launch.host) and launch.args.handoff_max_bytes > 0


def launch_torchserve(launch: Launch):
    """Start TorchServe and wait for its frontend process; records the run's state.json."""
    args, paths = launch.args, launch.paths
    command = [launch.torchserve, "--start", "--ts-config", str(paths.config), "--model-store", str(launch.model_store),
               "--ncs"]
    if not launch.token_auth:
        command.append("--disable-token-auth")
    if args.foreground:
        command.append("--foreground")
    launch.log_offset = paths.model_log.stat().st_size if paths.model_log.is_file() else 0
    launch.started = time.time()
    print(f"intgrads: starting TorchServe on {launch.host}:{launch.ports.inference} with "
          f"{', '.join(s.name for s in launch.specs)} ({launch.workers} worker(s) each, "
          f"{'cuda' if args.cuda else 'cpu'}); {launch.java.describe()}; logs in {paths.logs}", flush=True)
    with open(paths.stdout, "ab") as out:
        wrapper = subprocess.Popen(command, cwd=paths.run_dir, env=torchserve_env(launch), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while launch.pid is None and time.time() < deadline:
        launch.pid = server_pid(paths)
        if launch.pid is None:
            if wrapper.poll() is not None and not args.foreground and wrapper.returncode != 0:
                break
            time.sleep(0.2)
    if launch.pid is None:
        wrapper.poll()
        raise LaunchError("TorchServe did not start (no frontend process)", log_tail=log_tails(paths))
    launch.state = {"frontend": "torchserve", "pid": launch.pid, "host": launch.host, "ports": launch.ports.__dict__,
                    "run_dir": str(paths.run_dir), "model_store": str(launch.model_store),
                    "token_auth": launch.token_auth, "started_at": launch.started,
                    "management_socket": str(launch.management_socket) if launch.management_socket else None,
                    "device": "cuda" if args.cuda else "cpu", "java": str(launch.java.java),
                    "models": {spec.name: {"key": spec.key, "family": spec.family, "workers": launch.workers}
                               for spec in launch.specs}}
    paths.state.write_text(json.dumps(launch.state, indent=1), encoding="utf-8")


def wait_for_workers(launch: Launch) -> dict:
    """Wait until every worker is READY (stopping the server on failure or Ctrl-C); returns worker info."""
    try:
        info = wait_ready(launch.paths, launch.pid, launch.host, launch.ports,
                          {spec.name: launch.workers for spec in launch.specs}, launch.args.ready_timeout,
                          launch.token_auth, launch.log_offset, management_target(launch.state, launch.paths.run_dir))
    except (LaunchError, KeyboardInterrupt):
        stop_server(launch.paths, quiet=True)
        raise
    launch.state["worker_pids"] = sorted({int(w["pid"]) for v in info.values() for w in v["workers"]
                                          if int(w.get("pid") or 0) > 0})
    launch.state["ready_at"] = time.time()
    launch.paths.state.write_text(json.dumps(launch.state, indent=1), encoding="utf-8")
    return info


def curl_lines(base: str, name: str, token: str | None) -> list[str]:
    auth = f" -H \"Authorization: Bearer {token}\"" if token else ""
    return [
        f"  curl {base}/predictions/{name}{auth} -H 'Content-Type: application/json' "
        f"-d '{{\"sequence\": \"{EXAMPLE_SENTENCE}\"}}' --output saved_file.gzip",
    ]


def print_ready(launch: Launch, info: dict):
    """The models' URLs, the curl, the keys when token auth is on, and the scale and stop commands."""
    args, paths, host = launch.args, launch.paths, launch.host
    keys = read_keys(paths.run_dir) if launch.token_auth else {}
    shown_host = url_host(public_host(host))
    base = f"http://{shown_host}:{launch.ports.inference}"
    device = "cuda" if args.cuda else "cpu"
    print(f"\nintgrads: ready in {time.time() - launch.started:.1f} s: TorchServe pid {launch.pid}, run directory "
          f"{paths.run_dir}")
    for spec in launch.specs:
        print(f"  {spec.name}: {spec.family} from {spec.weights} -> {base}/predictions/{spec.name} "
              f"({info[spec.name]['ready']} worker(s), {device})")
    print("\nGet the attributions of a sentence (a gzip of the torch.save'd dict):")
    for spec in launch.specs:
        for line in curl_lines(base, spec.name, keys.get("inference")):
            print(line)
    first = launch.specs[0].name
    print(f"A JSON summary instead: add -H 'Accept: application/json' (or POST to {base}/explanations/{first})")
    if launch.token_auth:
        print(f"\nToken auth is on (host {host}). Inference key: {keys.get('inference')}  "
              f"management key: {keys.get('management')}\n  (both in {paths.run_dir / 'key_file.json'}; "
              f"they expire after {launch.props.get('token_expiration_min', '60')} min)")
        if host in ("0.0.0.0", "::"):
            print("  Use the address of this machine that clients can reach (hostname -I lists them).")
    run_dir_flag = f" --run-dir {paths.run_dir}" if args.run_dir else ""
    if launch.management_socket:
        print(f"Scale: {program()} --scale {first}=2 -p {args.port}{run_dir_flag}   (management API, for this user "
              f"only: curl --unix-socket {launch.management_socket} http://localhost/models/{first})")
    else:
        print(f"Scale: curl -X PUT -H \"Authorization: Bearer {keys.get('management')}\" "
              f"'http://{shown_host}:{launch.ports.management}/models/{first}?min_worker=2&synchronous=true'")
    stop_hint = f"{program()} --stop -p {args.port}" + run_dir_flag
    print(f"Stop:  {stop_hint}", flush=True)


def run_foreground(launch: Launch) -> int:
    """Stay attached until Ctrl-C or SIGTERM (then stop the server) or until TorchServe exits."""
    pid, paths = launch.pid, launch.paths
    print("intgrads: running in the foreground; Ctrl-C stops the server.", flush=True)
    stopping = {"flag": False}

    def on_signal(signum, frame):
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        while pid_alive(pid) and not stopping["flag"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    if pid_alive(pid):
        stop_server(paths)
        return 0
    try:
        if json.loads(paths.state.read_text(encoding="utf-8")).get("stopped_at"):
            print("intgrads: the server was stopped")
            return 0
    except (OSError, ValueError):
        pass
    print(f"intgrads: TorchServe exited unexpectedly\n{log_tails(paths)}", file=sys.stderr)
    return 1


def check_cuda(args):
    import torch

    if not torch.cuda.is_available():
        raise LaunchError("--cuda: torch sees no CUDA device here (driver, CUDA build of torch, "
                          "CUDA_VISIBLE_DEVICES?); run with --cpu instead", code=2)
    count = torch.cuda.device_count()
    if args.num_cuda_devs > count:
        raise LaunchError(f"--num-cuda-devs {args.num_cuda_devs}: only {count} GPU(s) visible", code=2)
