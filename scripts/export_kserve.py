#!/usr/bin/env python3
"""Write the KServe storage layout for intgrads models: ``OUT/config/config.properties`` + ``OUT/model-store/*.mar``.

    .venv/bin/python scripts/export_kserve.py -o kserve-out -bp bert.pth --tokenizer ./bert-base-uncased --cuda
    .venv/bin/python scripts/export_kserve.py -o kserve-out --demo                       # CPU archive
    .venv/bin/python scripts/export_kserve.py --help

The model flags are the launcher's own (``intgrads --help``): the archives are built by the launcher's
functions (``intgrads.launcher.model_specs`` / ``build_archive`` / ``archive_settings``), so an archive here is
byte for byte what ``intgrads`` would serve, and the build cache is the launcher's model store
(``--model-store``, default ``model_store/``). Server flags (host, ports, run directory...) do not apply:
KServe starts TorchServe itself, with the ports written here.

The ``config.properties`` follows KServe's TorchServe layout (inference and management on 8085, the port the
kserve wrapper in the ``pytorch/torchserve-kfs`` image forwards to; metrics on 8082; gRPC on 7070/7071;
``enable_envvars_config=true`` so that KServe can set the v1/v2 envelope with ``TS_SERVICE_ENVELOPE``;
``model_store=/mnt/models/model-store``, where KServe mounts ``storageUri``; a one-line JSON
``model_snapshot`` naming each model, its .mar and its workers, batch size and timeouts) plus this
project's size and timeout settings from the launcher's ``config.properties`` (or ``--ts-config``).
Upload OUT as it is and point the InferenceService's ``storageUri`` at it: see docs/kserve.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, "") and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))   # run from a checkout without installing the package

from intgrads import launcher  # noqa: E402
from intgrads.launcher import LaunchError  # noqa: E402

# Where KServe puts things (docs: kserve.github.io .../modelserving/v1beta1/torchserve/).
KSERVE_MODEL_STORE = "/mnt/models/model-store"
KSERVE_ADDRESSES = {
    # The kserve wrapper (port 8080, the container port KServe routes to) forwards to TorchServe on 8085: it
    # rewrites inference_address to port 8085 whatever is written here, so 8085 it must be.
    "inference_address": "http://0.0.0.0:8085",
    "management_address": "http://0.0.0.0:8085",
    "metrics_address": "http://0.0.0.0:8082",   # the kserve-torchserve runtime's prometheus.kserve.io/port
    "grpc_inference_port": "7070",
    "grpc_management_port": "7071",
}
# Settings carried over from the launcher's config.properties (or --ts-config): our sizes and timeouts.
CARRIED = ("max_response_size", "max_request_size", "default_response_timeout", "default_startup_timeout",
           "job_queue_size", "decode_input_request", "disable_system_metrics")
CARRIED_DEFAULTS = {"max_response_size": "1073741824", "max_request_size": "67108864",
                    "default_response_timeout": "1800", "default_startup_timeout": "600", "job_queue_size": "100",
                    "decode_input_request": "false"}
# Launcher flags that only make sense for a server the launcher starts itself.
SERVER_ONLY = {"host": "-h/--host", "port": "-p/--port", "management_port": "--management-port",
               "metrics_port": "--metrics-port", "run_dir": "--run-dir", "token_expiration_min": "--token-expiration-min",
               "ready_timeout": "--ready-timeout", "foreground": "--foreground", "stop": "--stop"}
LAYOUT_ENTRIES = ("config", "model-store")


# ---------------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    """The launcher's parser (same model, device, default and limit flags), less its server flags, plus --out."""
    parser = launcher.build_parser()
    parser.prog = "export_kserve.py"
    parser.description = (
        "Write the KServe storage layout (OUT/config/config.properties + OUT/model-store/*.mar) for the\n"
        "kserve-torchserve runtime. The model, device, default and limit flags are the launcher's\n"
        "(intgrads --help) and the archives are the ones it builds. Upload OUT and point the InferenceService's\n"
        "storageUri at it (docs/kserve.md).")
    parser.epilog = (
        "Examples:\n"
        "  export_kserve.py -o kserve-out -bp bert.pth --tokenizer ./bert-base-uncased --cuda\n"
        "  export_kserve.py -o kserve-out -bp bert.pth -xlb xlnet-base.pth --cuda --workers-per-gpu 2\n"
        "  export_kserve.py -o kserve-out --demo\n\n"
        "--batch-size must stay 1: KServe's envelope answers only the first request of a TorchServe batch.")
    for action in parser._actions:   # argparse has no public way to hide inherited options
        if action.dest in SERVER_ONLY:
            action.help = argparse.SUPPRESS
        elif action.dest == "model_store":
            action.help = "where the archives are built and cached before they are copied into OUT (default: " \
                          "the launcher's model_store/)"
        elif action.dest == "cuda" and "--cuda" in action.option_strings:
            action.help = "archive the models for GPU workers (what the manifest's nvidia.com/gpu is for)"
        elif action.dest == "workers":
            action.default = 1   # the pod's cores are not known here; KServe scales with replicas
            action.help = "on CPU: workers per model in the pod (default 1); each uses the pod's cores/workers " \
                          "torch threads"
    export = parser.add_argument_group("export")
    export.add_argument("-o", "--out", required=True, metavar="DIR",
                        help="the layout's folder (created; a previous export there is replaced)")
    export.add_argument("--py-dep-per-model", dest="py_dep_per_model", action=argparse.BooleanOptionalAction,
                        default=True,
                        help="write install_py_dep_per_model=true as KServe's sample does (default), so that "
                             "TorchServe pip-installs each archive's requirements.txt at load time; the image of "
                             "deploy/kserve/Dockerfile has them already and turns this off with "
                             "TS_INSTALL_PY_DEP_PER_MODEL=false")
    return parser


def check_args(args, parser: argparse.ArgumentParser):
    defaults = {dest: parser.get_default(dest) for dest in SERVER_ONLY}
    for dest, flag in SERVER_ONLY.items():
        if getattr(args, dest) != defaults[dest]:
            raise LaunchError(f"{flag} is a server flag: the export starts no server (KServe does, on the ports "
                              "of the exported config.properties)", code=2)
    if args.batch_size != 1:
        raise LaunchError(f"--batch-size {args.batch_size}: KServe's v1/v2 envelope reads only the first request of "
                          "a TorchServe batch and answers it alone, so the others would fail; keep --batch-size 1", code=2)
    if args.cuda:
        if args.num_cuda_devs < 1 or args.workers_per_gpu < 1:
            raise LaunchError("--num-cuda-devs and --workers-per-gpu must be at least 1", code=2)
    elif args.workers < 1:
        raise LaunchError("--workers must be at least 1", code=2)
    for flag, value in (("--max-steps", args.max_steps), ("--max-tokens", args.max_tokens),
                        ("--max-sequences", args.max_sequences), ("--max-chars", args.max_chars),
                        ("--max-body-bytes", args.max_body_bytes)):
        if value < 1:
            raise LaunchError(f"{flag} must be at least 1", code=2)
    if args.chunk_tokens is not None and args.chunk_tokens < 1:
        raise LaunchError("--chunk-tokens must be at least 1", code=2)
    if args.max_batch_delay < 0:
        raise LaunchError("--max-batch-delay must be 0 or more", code=2)
    launcher.check_defaults(args)


# ---------------------------------------------------------------------------------------------- layout
def snapshot_entry(settings: dict, mar_name: str) -> dict:
    """One model's entry in model_snapshot, from the same settings the archive's model-config.yaml holds."""
    return {
        "defaultVersion": True,
        "marName": mar_name,
        "minWorkers": settings["minWorkers"],
        "maxWorkers": settings["maxWorkers"],
        "batchSize": settings["batchSize"],
        "maxBatchDelay": settings["maxBatchDelay"],
        "responseTimeout": settings["responseTimeout"],
        "startupTimeout": settings["startupTimeout"],
    }


def model_snapshot(entries: dict) -> dict:
    return {"name": "startup.cfg", "modelCount": len(entries),
            "models": {name: {"1.0": entry} for name, entry in entries.items()}}


def config_text(base_props: dict, snapshot: dict, *, number_of_gpu: int, py_dep_per_model: bool, source: str) -> str:
    """config.properties for KServe. One key per line, no continuation lines and no backslashes: the kserve
    wrapper reads this file with a plain split on '=' and json.loads the model_snapshot value."""
    props = dict(KSERVE_ADDRESSES)
    props.update({
        "enable_envvars_config": "true",
        "install_py_dep_per_model": "true" if py_dep_per_model else "false",
        "enable_metrics_api": "true",
        "metrics_mode": "prometheus",
        "number_of_netty_threads": "4",
        "model_store": KSERVE_MODEL_STORE,
        # KServe authenticates at its ingress; the wrapper calls TorchServe without a token.
        "disable_token_authorization": "true",
        "enable_model_api": "false",
        "number_of_gpu": str(number_of_gpu),
    })
    for key in CARRIED:
        value = base_props.get(key, CARRIED_DEFAULTS.get(key))
        if value is not None:
            props[key] = value
    props["model_snapshot"] = json.dumps(snapshot, separators=(",", ":"))
    for key, value in props.items():
        if "\n" in value or "\\" in value:
            raise LaunchError(f"config.properties: {key} has a backslash or a line break ({value!r}); KServe's "
                              "wrapper cannot read that")
    lines = [
        "# KServe storage layout for the kserve-torchserve runtime, written by scripts/export_kserve.py",
        f"# from {source} and its flags. KServe mounts this folder at /mnt/models and starts",
        "#   torchserve --start --model-store /mnt/models/model-store --ts-config /mnt/models/config/config.properties",
        "# TS_* environment variables override these keys (enable_envvars_config): KServe sets TS_SERVICE_ENVELOPE.",
        "# See docs/kserve.md.",
    ]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def _prepare_out(out: Path):
    if out.exists() and not out.is_dir():
        raise LaunchError(f"--out {out}: a file is in the way", code=2)
    if out.is_dir():
        extra = sorted(item.name for item in out.iterdir() if item.name not in LAYOUT_ENTRIES)
        if extra:
            raise LaunchError(f"--out {out}: the folder holds other things than a previous export "
                              f"({', '.join(extra[:5])}); choose an empty or new folder", code=2)


def export(args) -> dict:
    """Build (or reuse) the archives and write the layout; returns a summary."""
    home = launcher.project_home()
    store = Path(args.model_store).expanduser().resolve() if args.model_store else home / "model_store"
    out = Path(args.out).expanduser().resolve()
    _prepare_out(out)
    if store == out / "model-store" or out in store.parents or store == out:
        raise LaunchError("--model-store must not be inside --out (it is the build cache; the export copies the "
                          "archives into OUT/model-store)", code=2)
    archiver = launcher.find_tool("torch-model-archiver")
    store.mkdir(parents=True, exist_ok=True)
    specs = launcher.model_specs(args, store)
    base_config = Path(args.ts_config).expanduser() if args.ts_config else launcher.default_config_properties()
    if args.ts_config and not base_config.is_file():
        raise LaunchError(f"--ts-config {args.ts_config}: no such file", code=2)
    base_props = launcher.read_properties(base_config) if base_config else {}

    entries, mars = {}, []
    for spec in specs:
        mar, _ = launcher.build_archive(spec, args, store, base_props, archiver)
        settings = launcher.archive_settings(spec, args, None, base_props)
        entries[spec.name] = snapshot_entry(settings, mar.name)
        mars.append(mar)

    staging = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "config").mkdir(parents=True)
        (staging / "model-store").mkdir()
        for mar in mars:
            shutil.copy2(mar, staging / "model-store" / mar.name)
        snapshot = model_snapshot(entries)
        text = config_text(base_props, snapshot, number_of_gpu=args.num_cuda_devs if args.cuda else 0,
                           py_dep_per_model=args.py_dep_per_model,
                           source=str(base_config) if base_config else "built-in defaults")
        (staging / "config" / "config.properties").write_text(text, encoding="utf-8")
        out.mkdir(parents=True, exist_ok=True)
        for entry in LAYOUT_ENTRIES:
            old = out / entry
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif old.exists() or old.is_symlink():
                old.unlink()
            os.replace(staging / entry, old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"out": out, "models": entries, "specs": specs, "device": "cuda" if args.cuda else "cpu"}


def print_summary(summary: dict):
    out = summary["out"]
    print(f"\nintgrads: KServe layout written to {out}")
    print(f"  {out / 'config' / 'config.properties'}")
    for name, entry in summary["models"].items():
        size = (out / "model-store" / entry["marName"]).stat().st_size / 1e6
        print(f"  {out / 'model-store' / entry['marName']}  ({size:.1f} MB; {name}: {entry['minWorkers']} worker(s), "
              f"{summary['device']})")
    if summary["device"] == "cpu":
        print("  The archives run their workers on the CPU; add --cuda for the GPU the manifest requests.")
    first = next(iter(summary["models"]))
    print("\nNext (docs/kserve.md): upload the folder as it is, e.g.\n"
          f"  aws s3 sync {out} s3://BUCKET/intgrads/v1\n"
          "set storageUri in deploy/kserve/inferenceservice.yaml to that folder, build the image of "
          "deploy/kserve/Dockerfile, then\n"
          "  kubectl apply -f deploy/kserve/inferenceservice.yaml\n"
          f"  curl -H \"Host: $SERVICE_HOSTNAME\" http://$INGRESS/v1/models/{first}:explain "
          "-d '{\"instances\": [{\"sequence\": \"a good movie\"}]}'", flush=True)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args, parser)
        summary = export(args)
    except LaunchError as error:
        print(f"export_kserve: error: {error.message}", file=sys.stderr)
        if error.log_tail:
            print(error.log_tail, file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("export_kserve: interrupted", file=sys.stderr)
        return 130
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
