"""``intgrads --frontend ray``: the same models and flags, served by Ray Serve.

Start: check the flags, build the same ``.mar`` archives, start a Ray head of the run's own (token auth, its files
in the run directory) or use the cluster at ``--ray-address``, deploy one Serve application per model and the
front (``intgrads.launcher.ray_deploy``), wait until every replica answers, print the curl. Stop: the run's own
cluster is stopped whole (``intgrads.launcher.ray_cluster.stop_cluster``: no Ray process of it is left, no other
touched); on a cluster it joined, only its applications are removed. Scale: the model's replica count, with the
memory ceiling TorchServe's workers have.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path

from ..system import UNPACKED_PREFIX, sweep_orphans, usable_cores
from . import ray_cluster, ray_deploy
from .archive import build_archive
from .cli import check_flags, resolve_workers
from .management import MEMORY_SHARE, mem_available, worker_ceiling
from .paths import LaunchError, RunPaths, default_config_properties, program, project_home, run_paths
from .process import find_tool, remove_leftovers
from .specs import model_specs
from .start import EXAMPLE_SENTENCE, check_cuda, refuse_planted
from .tsconfig import is_loopback, public_host, read_properties, url_host



RAY_TEMP = "r"   # Ray's temp dir, in the owner-only RUN/ray (Ray opens its temp dir to every user)


def ray_folder(paths: RunPaths) -> Path:
    """Where the run's Ray keeps its logs and sockets: RUN/ray/r, or, when that path is too long for Ray's Unix
    sockets, r in a private folder of the temp folder (or /tmp). Its parent is owner-only either way."""
    folder = paths.run_dir / "ray" / RAY_TEMP
    if len(os.fsencode(folder)) <= ray_cluster.MAX_RAY_FOLDER:
        return folder
    return ray_cluster.short_private_folder("intgrads-ray-", room=len("/" + RAY_TEMP)) / RAY_TEMP


def _state(paths: RunPaths) -> dict:
    try:
        return json.loads(paths.state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_key_file(paths: RunPaths) -> Path:
    """RUN/key_file.json (owner-only) with a new inference key, in TorchServe's layout (the client's --key-file
    reads either)."""
    path = paths.run_dir / "key_file.json"
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"inference": {"key": secrets.token_urlsafe(24)}}, handle)
    return path


def start_ray(args) -> int:
    home = project_home()
    paths = run_paths(args, home)
    refuse_planted(paths)
    check_flags(args)
    host = args.host or "127.0.0.1"
    if _state(paths).get("frontend") == "ray" and not _state(paths).get("stopped_at"):
        raise LaunchError(f"an intgrads server may be running for {paths.run_dir}: stop it with {program()} --stop "
                          f"-p {args.port}, or pick another -p", code=1)
    if not ray_cluster.port_free(args.port, host):
        raise LaunchError(f"port {args.port} on {host} is taken: stop what runs there or choose another -p")
    if args.cuda:
        check_cuda(args)
    model_store = Path(args.model_store).expanduser().resolve() if args.model_store else home / "model_store"
    model_store.mkdir(parents=True, exist_ok=True)
    specs = model_specs(args, model_store)
    resolve_workers(args, len(specs))
    base_config = Path(args.ts_config).expanduser() if args.ts_config else default_config_properties()
    props = read_properties(base_config) if base_config else {}
    archiver = find_tool("torch-model-archiver")
    archives = {spec.name: build_archive(spec, args, model_store, props, archiver)[0] for spec in specs}
    for folder in (paths.run_dir, paths.logs):
        folder.mkdir(parents=True, exist_ok=True)
    remove_leftovers(paths)
    started = time.time()
    state = {"frontend": "ray", "host": host, "ports": {"inference": args.port}, "run_dir": str(paths.run_dir),
             "model_store": str(model_store), "token_auth": not is_loopback(host), "started_at": started,
             "device": "cuda" if args.cuda else "cpu",
             "models": {spec.name: {"key": spec.key, "family": spec.family} for spec in specs}}
    try:
        dashboard = _cluster(args, paths, state)
        apps = _applications(args, paths, state, specs, archives)
        print(f"intgrads: deploying {', '.join(archives)} on Ray Serve ({state['replicas']} replica(s) each, "
              f"{state['device']}); logs in {paths.logs}", flush=True)
        dashboard.deploy(apps, host=host, port=args.port)
        state["applications"] = [app["name"] for app in apps]
        paths.state.write_text(json.dumps(state, indent=1), encoding="utf-8")
        details = dashboard.wait_ready(apps, args.ready_timeout, on_failure=lambda: _log_tail(state))
    except BaseException:   # nothing of a start that failed is left running
        stop_ray(paths, quiet=True)
        raise
    state["replica_pids"] = {name: ray_deploy.replica_pids(details, name) for name in archives}
    state["ready_at"] = time.time()
    paths.state.write_text(json.dumps(state, indent=1), encoding="utf-8")
    _print_ready(args, paths, state, started)
    return _foreground(paths) if args.foreground else 0


def _cluster(args, paths: RunPaths, state: dict) -> ray_deploy.Dashboard:
    """The dashboard of the cluster to deploy on: the run's own (started here) or ``--ray-address``'s."""
    if args.ray_address:
        token_file = args.ray_token_file or os.environ.get("RAY_AUTH_TOKEN_PATH")
        token = Path(token_file).read_text().strip() if token_file else None
        address = args.ray_address.removeprefix("http://").rstrip("/")
        state.update(own_cluster=False, dashboard=address, token_file=token_file)
        dashboard = ray_deploy.Dashboard(address, token)
        dashboard.wait_answering(30)
        return dashboard
    folder = ray_folder(paths)
    token_path = ray_cluster.make_token(paths.private / "ray_token")
    ports = ray_cluster.free_block(args.port)
    gpus = args.num_cuda_devs if args.cuda else 0
    state.update(own_cluster=True, ray_dir=str(folder), dashboard=f"127.0.0.1:{ports.dashboard}",
                 gcs=f"127.0.0.1:{ports.gcs}", token_file=str(token_path), ray_ports=ports.base)
    paths.state.write_text(json.dumps(state, indent=1), encoding="utf-8")
    print(f"intgrads: starting a Ray head (token auth, its files in {folder})", flush=True)
    trusted = args.trusted_proxy or []   # the HTTP proxy puts X-Forwarded-For's caller in their requests' place
    ray_cluster.start_head(folder, ports, token_path, cpus=usable_cores(), gpus=gpus, log=paths.logs / "ray.out",
                           environ={"FORWARDED_ALLOW_IPS": ",".join(trusted)} if trusted else None)
    dashboard = ray_deploy.Dashboard(state["dashboard"], token_path.read_text().strip())
    dashboard.wait_answering()
    return dashboard


def _applications(args, paths, state, specs, archives) -> list[dict]:
    share = (args.workers_per_gpu * args.num_cuda_devs if args.cuda else args.workers) * len(specs)
    key_file = str(write_key_file(paths)) if state["token_auth"] else None
    handoff = None
    if not state["token_auth"] and args.handoff_max_bytes > 0:
        paths.handoff.mkdir(mode=0o700, exist_ok=True)
        handoff = str(paths.handoff)
    state.update(replicas=share // len(specs), key_file=key_file)
    return ray_deploy.applications(args, archives, cpus_each=max(0.1, round(usable_cores() / share, 2)),
                                   threads=max(1, usable_cores() // share), key_file=key_file, handoff_dir=handoff,
                                   version=ray_deploy.code_version())


def _log_tail(state: dict) -> str:
    """The last error of the Serve controller's log (a replica that failed to start), for the message."""
    folder = state.get("ray_dir")
    logs = sorted(Path(folder).glob("session_*/logs/serve/controller_*.log")) if folder else []
    if not logs:
        return ""
    lines = logs[-1].read_text(errors="replace").splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith(("ERROR", "Traceback"))]
    start = errors[-1] if errors else max(0, len(lines) - 20)
    return "\n".join(lines[start:start + 60][-40:])


def _print_ready(args, paths: RunPaths, state: dict, started: float):
    base = f"http://{url_host(public_host(state['host']))}:{args.port}"
    key = json.loads(Path(state["key_file"]).read_text())["inference"]["key"] if state.get("key_file") else None
    auth = f" -H \"Authorization: Bearer {key}\"" if key else ""
    print(f"\nintgrads: ready in {time.time() - started:.1f} s on Ray Serve, run directory {paths.run_dir}")
    for name in state["models"]:
        print(f"  {name}: {base}/predictions/{name} ({state['replicas']} replica(s), {state['device']})")
    print("\nGet the attributions of a sentence (a gzip of the torch.save'd dict):")
    for name in state["models"]:
        print(f"  curl {base}/predictions/{name}{auth} -H 'Content-Type: application/json' "
              f"-d '{{\"sequence\": \"{EXAMPLE_SENTENCE}\"}}' --output saved_file.gzip")
    first = next(iter(state["models"]))
    print(f"A JSON summary instead: add -H 'Accept: application/json' (or POST to {base}/explanations/{first}); "
          f"options may go in the query string (?n_steps=20)")
    if key:
        print(f"\nRequests from other machines need the inference key: {key} (in {state['key_file']})")
    run_dir_flag = f" --run-dir {paths.run_dir}" if args.run_dir else ""
    print(f"Metrics: curl {base}/metrics\nScale: {program()} --scale {first}=2 -p {args.port}{run_dir_flag}")
    print(f"Stop:  {program()} --stop -p {args.port}{run_dir_flag}", flush=True)


def _foreground(paths: RunPaths) -> int:
    print("intgrads: running in the foreground; Ctrl-C stops the server.", flush=True)
    stopping = {"flag": False}
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.update(flag=True))
    try:
        while not stopping["flag"] and not _state(paths).get("stopped_at"):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    stop_ray(paths)
    return 0


def stop_ray(paths: RunPaths, quiet: bool = False) -> bool:
    """Stop the Ray server of this run directory: its own cluster whole, or its applications on a joined one."""
    state = _state(paths)
    ended = 0
    if state.get("own_cluster") and state.get("ray_dir"):
        ended = ray_cluster.stop_cluster(Path(state["ray_dir"]))
        if not str(state["ray_dir"]).startswith(str(paths.run_dir)):   # a folder of its own in the temp folder
            folder = Path(state["ray_dir"])
            shutil.rmtree(folder.parent if folder.name == RAY_TEMP else folder, ignore_errors=True)
    elif state.get("dashboard") and state.get("applications") and not state.get("stopped_at"):
        token = Path(state["token_file"]).read_text().strip() if state.get("token_file") else None
        try:
            dashboard = ray_deploy.Dashboard(state["dashboard"], token)
            dashboard.deploy([], host=state["host"], port=state["ports"]["inference"],
                             drop=tuple(state["applications"]))
            ended = len(state["applications"])
        except OSError as error:
            if not quiet:
                print(f"intgrads: the cluster at {state['dashboard']} did not answer ({error})")
    remove_leftovers(paths)
    sweep_orphans(Path(tempfile.gettempdir()), UNPACKED_PREFIX)   # the replicas' unpacked archives
    if state:
        state["stopped_at"] = time.time()
        paths.state.write_text(json.dumps(state, indent=1), encoding="utf-8")
    if not quiet:
        print(f"intgrads: stopped the Ray server on port {state.get('ports', {}).get('inference', '?')}"
              f" ({ended} process(es) ended)" if ended else f"intgrads: no server is running for {paths.run_dir}")
    return bool(ended)


def free_resources(state: dict) -> dict | None:
    """The logical CPUs and GPUs free in the run's own cluster now (None for a cluster it joined)."""
    if not state.get("gcs"):
        return None
    os.environ.update(ray_cluster.ray_env(Path(state["token_file"])))
    import ray

    ray.init(address=state["gcs"], logging_level="ERROR", log_to_driver=False)
    try:
        return ray.available_resources()
    finally:
        ray.shutdown()


def _check_room(state: dict, deployment: dict, more: int, name: str):
    """Refuse more replicas than the cluster has free CPUs or GPUs for (Ray would leave them pending)."""
    free = free_resources(state) if more > 0 else None
    if free is None:
        return
    options = deployment.get("ray_actor_options") or {}
    for resource, each in (("CPU", options.get("num_cpus") or 0), ("GPU", options.get("num_gpus") or 0)):
        if each and free.get(resource, 0.0) + 1e-9 < more * each:
            raise LaunchError(f"--scale: {more} more replica(s) of {name} need {more * each:g} {resource}(s) and the "
                              f"cluster has {free.get(resource, 0.0):g} free: add a node ({join_hint(state)}) or ask "
                              "for fewer", code=2)


def join_hint(state: dict) -> str:
    """How another machine joins the run's cluster: the GCS at this machine's address, with the token."""
    port = state["gcs"].rsplit(":", 1)[1]
    return (f"on the other machine: RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=<a copy of {state['token_file']}> "
            f"ray start --address {url_host(public_host('0.0.0.0'))}:{port}")


def scale_ray(paths: RunPaths, spec: str) -> str:
    """``NAME=N``: N replicas of model NAME, refused above what this machine's memory holds."""
    name, _, count = spec.partition("=")
    if not name or not count.isdigit() or int(count) < 1:
        raise LaunchError(f"--scale {spec!r}: write MODEL=N with N at least 1, e.g. --scale demo=2", code=2)
    state, wanted = _state(paths), int(count)
    if state.get("stopped_at") or not state.get("dashboard"):
        raise LaunchError(f"the server of {paths.run_dir} is not running")
    if name not in (state.get("models") or {}):
        raise LaunchError(f"--scale: no model {name!r} here; it serves {', '.join(state.get('models') or [])}", code=2)
    token = Path(state["token_file"]).read_text().strip() if state.get("token_file") else None
    dashboard = ray_deploy.Dashboard(state["dashboard"], token)
    details = dashboard.details()
    ceiling, largest = worker_ceiling(ray_deploy.replica_pids(details, name))
    if wanted > ceiling:
        raise LaunchError(
            f"--scale {name}={wanted}: at most {ceiling} replica(s) fit this machine now (each replica of {name} "
            f"holds ~{largest / 1e9:.2f} GB, {mem_available() / 1e9:.1f} GB available, {MEMORY_SHARE:.0%} of it "
            "usable)", code=2)
    app = next(app for app in dashboard.applications() if app["name"] == name)
    _check_room(state, app["deployments"][0], wanted - len(ray_deploy.replica_pids(details, name)), name)
    app["deployments"][0]["num_replicas"] = wanted
    dashboard.deploy([app], host=state["host"], port=state["ports"]["inference"])
    dashboard.wait_ready([app], 600)
    return f"intgrads: {name} scaled to {wanted} replica(s) (at most {ceiling} fit this machine now)"
