#!/usr/bin/env python3
"""Write a KubeRay ``RayService`` for intgrads models: ``OUT/rayservice.yaml`` + ``OUT/model-store/*.mar``.

    .venv/bin/python scripts/export_kuberay.py -o kuberay-out -bp bert.pth --tokenizer ./bert-base-uncased --cuda
    .venv/bin/python scripts/export_kuberay.py -o kuberay-out --demo --workers 2

The model, device, default and limit flags are the launcher's (``intgrads --help``), and so are the archives
and the Serve applications: ``serveConfigV2`` holds exactly what ``intgrads --frontend ray`` deploys
(``intgrads.launcher.ray_deploy.applications``), with the archives read from the model store's volume
(``/mnt/models/model-store``) and the inference key, when ``--key-secret`` names one, from a mounted Secret.
Nodes: a head pod (the dashboard, Serve's controller and proxy; no replicas) and a worker group of
``--nodes`` pods, each with ``--node-cpus`` CPUs (and one GPU per ``--workers-per-gpu`` replicas with
``--cuda``). Every pod runs Ray with token auth, its token from the Secret ``--token-secret``. See
docs/kuberay.md.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, "") and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))   # run from a checkout without installing the package

from intgrads import launcher  # noqa: E402
from intgrads.launcher import LaunchError  # noqa: E402
from intgrads.launcher.ray_deploy import applications, code_version, serve_config  # noqa: E402

MODEL_STORE = "/mnt/models/model-store"
KEY_FILE = "/etc/intgrads/key_file.json"
RAY_VERSION = "2.60.0"
SERVER_ONLY = {"host": "-h/--host", "port": "-p/--port", "management_port": "--management-port",
               "metrics_port": "--metrics-port", "run_dir": "--run-dir", "token_expiration_min": "--token-expiration-min",
               "ready_timeout": "--ready-timeout", "foreground": "--foreground", "stop": "--stop",
               "frontend": "--frontend", "ray_address": "--ray-address", "ray_token_file": "--ray-token-file"}


def build_parser() -> argparse.ArgumentParser:
    parser = launcher.build_parser()
    parser.prog = "export_kuberay.py"
    parser.description = ("Write a KubeRay RayService (OUT/rayservice.yaml) and the archives it serves "
                          "(OUT/model-store/*.mar) for the models of the launcher's flags (docs/kuberay.md).")
    parser.epilog = "Example:\n  export_kuberay.py -o kuberay-out -bp bert.pth --cuda --workers-per-gpu 2 --nodes 2"
    for action in parser._actions:   # argparse has no public way to hide inherited options
        if action.dest in SERVER_ONLY:
            action.help = argparse.SUPPRESS
    export = parser.add_argument_group("export")
    export.add_argument("-o", "--out", required=True, metavar="DIR", help="the folder to write (created)")
    export.add_argument("--name", default="intgrads", help="the RayService's name (default intgrads)")
    export.add_argument("--image", default=f"rayproject/ray:{RAY_VERSION}-py311",
                        help="the pods' image: Ray with intgrads installed (pip install intgrads[ray])")
    export.add_argument("--nodes", type=int, default=1, help="worker pods (default 1)")
    export.add_argument("--node-cpus", type=int, default=4, help="CPUs of a worker pod (default 4)")
    export.add_argument("--model-volume", default="intgrads-models",
                        help="the PersistentVolumeClaim that holds OUT/model-store, mounted at /mnt/models")
    export.add_argument("--token-secret", default="intgrads-ray-token",
                        help="the Secret whose key 'token' is the cluster's Ray token (RAY_AUTH_MODE=token)")
    export.add_argument("--key-secret", default=None,
                        help="a Secret whose key 'key_file.json' holds the inference key ({\"inference\": {\"key\": "
                             "...}}): requests from outside the cluster then need it")
    return parser


def serve_applications(args, names: list[str]) -> list[dict]:
    """The applications of ``serveConfigV2``: the launcher's own for these flags, archives on the volume."""
    share = args.workers_per_gpu * args.num_cuda_devs if args.cuda else args.workers
    cpus_each = 1 if args.cuda else max(1, args.node_cpus * args.nodes // (share * len(names)))
    archives = {name: f"{MODEL_STORE}/{name}.mar" for name in names}
    return applications(args, archives, cpus_each=cpus_each, threads=max(1, int(cpus_each)),
                        key_file=KEY_FILE if args.key_secret else None, handoff_dir=None, version=code_version())


def _container(args, name: str, *, gpus: int, cpus: int) -> dict:
    limits = {"cpu": str(cpus), "memory": f"{4 * cpus}Gi", **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    mounts = [{"name": "models", "mountPath": "/mnt/models", "readOnly": True}]
    if args.key_secret:
        mounts.append({"name": "inference-key", "mountPath": "/etc/intgrads", "readOnly": True})
    return {"name": name, "image": args.image, "resources": {"limits": limits, "requests": limits},
            "env": [{"name": "RAY_AUTH_MODE", "value": "token"},
                    {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": args.token_secret,
                                                                               "key": "token"}}},
                    {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}],
            "volumeMounts": mounts}


def _volumes(args) -> list[dict]:
    volumes = [{"name": "models", "persistentVolumeClaim": {"claimName": args.model_volume, "readOnly": True}}]
    if args.key_secret:
        volumes.append({"name": "inference-key", "secret": {"secretName": args.key_secret}})
    return volumes


def rayservice(args, names: list[str]) -> dict:
    config = serve_config(serve_applications(args, names), host="0.0.0.0", port=8000)
    config["proxy_location"] = "EveryNode"
    gpus_per_node = math.ceil(args.num_cuda_devs / args.nodes) if args.cuda else 0
    head = {"rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": {"spec": {"containers": [_container(args, "ray-head", gpus=0, cpus=2)],
                                  "volumes": _volumes(args)}}}
    workers = {"groupName": "gpu" if args.cuda else "cpu", "replicas": args.nodes, "minReplicas": args.nodes,
               "maxReplicas": args.nodes, "rayStartParams": {},
               "template": {"spec": {"containers": [_container(args, "ray-worker", gpus=gpus_per_node,
                                                               cpus=args.node_cpus)],
                                     "volumes": _volumes(args)}}}
    return {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": args.name},
            "spec": {"serveConfigV2": yaml.safe_dump(config, sort_keys=False),
                     "rayClusterConfig": {"rayVersion": RAY_VERSION, "headGroupSpec": head,
                                          "workerGroupSpecs": [workers]}}}


def export(args, defaults: dict) -> dict:
    for dest, flag in SERVER_ONLY.items():
        if getattr(args, dest) != defaults[dest]:
            raise LaunchError(f"{flag} is a server flag: the export starts no server (KubeRay does)", code=2)
    launcher.check_defaults(args)
    if args.nodes < 1 or args.node_cpus < 1:
        raise LaunchError("--nodes and --node-cpus must be at least 1", code=2)
    home = launcher.project_home()
    store = Path(args.model_store).expanduser().resolve() if args.model_store else home / "model_store"
    out = Path(args.out).expanduser().resolve()
    store.mkdir(parents=True, exist_ok=True)
    specs = launcher.model_specs(args, store)
    launcher.resolve_workers(args, len(specs), cores=args.node_cpus * args.nodes)
    base_config = launcher.default_config_properties()
    base_props = launcher.read_properties(base_config) if base_config else {}
    archiver = launcher.find_tool("torch-model-archiver")
    mars = [launcher.build_archive(spec, args, store, base_props, archiver)[0] for spec in specs]
    (out / "model-store").mkdir(parents=True, exist_ok=True)
    for mar in mars:
        shutil.copy2(mar, out / "model-store" / mar.name)
    manifest = rayservice(args, [spec.name for spec in specs])
    path = out / "rayservice.yaml"
    path.write_text("# Written by scripts/export_kuberay.py: see docs/kuberay.md.\n"
                    + yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return {"out": out, "manifest": path, "models": [spec.name for spec in specs]}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summary = export(args, {dest: parser.get_default(dest) for dest in SERVER_ONLY})
    except LaunchError as error:
        print(f"export_kuberay: error: {error.message}", file=sys.stderr)
        return error.code
    print(f"intgrads: RayService written to {summary['manifest']} ({', '.join(summary['models'])}); archives in "
          f"{summary['out'] / 'model-store'}\nNext (docs/kuberay.md): copy the archives to the volume "
          f"{MODEL_STORE.rsplit('/', 1)[0]} mounts, create the token Secret, then kubectl apply -f "
          f"{summary['manifest']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
