"""The ``intgrads`` command: package models into TorchServe archives, start TorchServe, print the curl.

    intgrads -bp /path/to/bert.pth --cpu
    intgrads -xlb /path/to/xlnet-base.pth --cuda --num-cuda-devs 4 -h 0.0.0.0 -p 8008
    intgrads --demo
    intgrads --stop [-p PORT]

It never imports TorchServe: ``torch-model-archiver`` and ``torchserve`` run as subprocesses (from this
Python's environment, else from PATH). Everything a run writes lives in its run directory
(``logs/serve-<port>/`` by default): the run's ``config.properties``, TorchServe's logs, its temp dir (pid
file, worker sockets, unpacked archives), ``key_file.json`` when token auth is on, and ``state.json``.
Archives go to the model store (``model_store/``) and are rebuilt only when an input changed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent
HANDLER_NAME = "intgrads_handler.py"
LOAD_ERROR_MARKER = "INTGRADS_LOAD_ERROR"
MODEL_KEYS = ("bert", "xlnet-base", "xlnet-large", "hf", "demo")
FAMILY_OF = {"bert": "bert", "xlnet-base": "xlnet-base", "xlnet-large": "xlnet-large", "hf": "hf", "demo": "hf"}
FLAG_OF = {"bert": "-bp/--bert-path", "xlnet-base": "-xlb/--xlnet-base-path", "xlnet-large": "-xll/--xlnet-large-path",
           "hf": "--hf-model", "demo": "--demo"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
EXAMPLE_SENTENCE = "This is the sequence that you want to get the sentiment of"
RUNTIME_REQUIREMENTS = ("transformers>=5,<6", "sentencepiece", "protobuf", "safetensors", "isal", "pyyaml")
LOG_TAIL_LINES = 40


class LaunchError(Exception):
    """A failure with a message that says what to do; ``log_tail`` is printed after it."""

    def __init__(self, message: str, log_tail: str = "", code: int = 1):
        super().__init__(message)
        self.message = message
        self.log_tail = log_tail
        self.code = code


# ---------------------------------------------------------------------------------------------- paths
def program() -> str:
    """How to call this command again in the hints printed (scripts/intgrads.sh sets INTGRADS_PROG)."""
    return os.environ.get("INTGRADS_PROG") or "intgrads"


def project_home() -> Path:
    """Where model_store/ and logs/ live: $INTGRADS_HOME, the source checkout, or the current directory."""
    if os.environ.get("INTGRADS_HOME"):
        return Path(os.environ["INTGRADS_HOME"]).expanduser().resolve()
    if (SOURCE_ROOT / "setup.cfg").is_file() and (SOURCE_ROOT / "handler" / HANDLER_NAME).is_file():
        return SOURCE_ROOT
    return Path.cwd()


def _share_file(*parts) -> Path | None:
    for base in (SOURCE_ROOT, Path(sys.prefix) / "share" / "intgrads"):
        candidate = base.joinpath(*parts)
        if candidate.is_file():
            return candidate
    return None


def handler_file() -> Path:
    found = _share_file("handler", HANDLER_NAME)
    if found is None:
        raise LaunchError(f"the TorchServe handler ({HANDLER_NAME}) is missing: reinstall intgrads")
    return found


def default_config_properties() -> Path | None:
    return _share_file("config.properties")


# ---------------------------------------------------------------------------------------------- arguments
# Tokens per forward/backward chunk when a request sets no internal_batch_size (scripts/bench.py part 4,
# docs/benchmarks.md): 3200 = 64 tokens x 50 steps in one pass; a 512-token bert-base request (6 rows a
# chunk) peaks at ~2.9 GB RSS on CPU, against > 10 GB all at once.
DEFAULT_CHUNK_TOKENS = 3200
MAX_DEFAULT_CPU_WORKERS = 4


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_cpu_workers(cores: int, n_models: int = 1) -> int:
    """CPU workers per model when ``--workers`` is not given: one per core, at most 4 in all, shared among
    the models (at least one each). Each worker then runs cores / workers torch threads. On the 2-core
    machine of docs/benchmarks.md, 2 workers x 1 thread gave the most sentences per second whenever several
    requests are in flight (intgrads-client sends 4 at a time); 1 worker x 2 threads only wins for a client
    that sends one request at a time (``--workers 1``)."""
    return max(1, min(cores, MAX_DEFAULT_CPU_WORKERS) // max(1, n_models))


def resolve_workers(args, n_models: int, cores: int | None = None) -> int:
    """Workers per model: --workers-per-gpu x --num-cuda-devs with --cuda, else --workers or the default
    above; sets ``args.workers`` so that the archives' model-config.yaml records the same number."""
    if args.cuda:
        return args.workers_per_gpu * args.num_cuda_devs
    if args.workers is None:
        args.workers = default_cpu_workers(usable_cores() if cores is None else cores, n_models)
    return args.workers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="intgrads", add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve integrated and intermediate gradients of BERT/XLNet sentiment classifiers with "
                    "TorchServe.\nPackages each model into model_store/<name>.mar, starts TorchServe, waits until "
                    "every worker is ready and prints the curl to use.",
        epilog="Several models may be served at once (each model flag once). --tokenizer, --config and "
               "--model-name take VALUE for a single model or KEY=VALUE (KEY: bert, xlnet-base, xlnet-large, hf, "
               "demo) to say which model they are for.\n\nExamples:\n"
               "  intgrads -bp bert.pth --tokenizer ./bert-base-uncased --cpu\n"
               "  intgrads -xlb xlnet-base.pth --cuda --num-cuda-devs 4 -h 0.0.0.0 -p 8008\n"
               "  intgrads --demo\n  intgrads --stop -p 8008")
    models = parser.add_argument_group("models")
    models.add_argument("-bp", "--bert-path", metavar="PTH", help="state-dict .pth of a BERT sentiment classifier")
    models.add_argument("-xlb", "--xlnet-base-path", metavar="PTH", help="state-dict .pth of an XLNet-base classifier")
    models.add_argument("-xll", "--xlnet-large-path", metavar="PTH", help="state-dict .pth of an XLNet-large classifier")
    models.add_argument("--hf-model", metavar="DIR", help="save_pretrained directory of any sequence classifier")
    models.add_argument("--demo", action="store_true",
                        help="a small sentiment classifier built offline on first use (cached in the model store)")
    models.add_argument("--tokenizer", action="append", default=[], metavar="[KEY=]DIR",
                        help="tokenizer directory (read offline) or hub name; default: the family's hub tokenizer "
                             "(bert-base-uncased, xlnet-base-cased, xlnet-large-cased), resolved once at archive time")
    models.add_argument("--config", action="append", default=[], metavar="[KEY=]PATH",
                        help="config.json (or a directory holding one) for a .pth whose shape is not the family's")
    models.add_argument("--model-name", action="append", default=[], metavar="[KEY=]NAME",
                        help="name in the URL /predictions/NAME (default: bert, xlnet-base, xlnet-large, hf, demo)")

    device = parser.add_argument_group("devices and workers")
    where = device.add_mutually_exclusive_group()
    where.add_argument("--cuda", dest="cuda", action="store_true", help="run the workers on GPUs")
    where.add_argument("--cpu", dest="cuda", action="store_false", help="run the workers on the CPU (default)")
    device.add_argument("--num-cuda-devs", type=int, default=1, metavar="N",
                        help="with --cuda: spread the workers over GPUs 0..N-1 (default 1)")
    device.add_argument("--workers-per-gpu", type=int, default=1, metavar="N",
                        help="with --cuda: workers per GPU and model (default 1)")
    device.add_argument("--workers", type=int, default=None, metavar="N",
                        help="on CPU: workers per model (default: one per core, at most 4 in all, the layout "
                             "with the most sentences/s; --workers 1 for one request at a time); each uses "
                             "cores/workers torch threads")
    device.add_argument("--batch-size", type=int, default=1, metavar="N",
                        help="TorchServe batch size: requests handed to a worker at once (default 1)")
    device.add_argument("--max-batch-delay", type=int, default=50, metavar="MS",
                        help="how long TorchServe waits to fill a batch, in ms (default 50)")

    from intgrads.baselines import BASELINES
    from intgrads.quadrature import METHODS

    answer = parser.add_argument_group("server-wide defaults for requests (a request may override them)")
    answer.add_argument("-b", "--baseline", default="zero",
                        help=f"baseline: {', '.join(BASELINES)} (default zero)")
    answer.add_argument("--n-steps", type=int, default=50, metavar="N", help="integration steps (default 50)")
    answer.add_argument("--method", default="gausslegendre",
                        help=f"quadrature: {', '.join(METHODS)} (default gausslegendre)")
    answer.add_argument("--target", default="1", metavar="CLASS",
                        help="class whose logit is attributed: an index or 'predicted' (default 1)")

    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-steps", type=int, default=500, metavar="N", help="largest n_steps accepted (default 500)")
    limits.add_argument("--max-tokens", type=int, default=512, metavar="N",
                        help="longer sentences are truncated to this many tokens (default 512, capped by the model)")
    limits.add_argument("--max-sequences", type=int, default=16, metavar="N",
                        help="most sentences in one request's \"sequences\" (default 16)")
    limits.add_argument("--max-chars", type=int, default=100_000, metavar="N",
                        help="longest sentence accepted, in characters (default 100000)")
    limits.add_argument("--chunk-tokens", type=int, default=DEFAULT_CHUNK_TOKENS, metavar="N",
                        help="bound memory: at most N (padded) tokens per forward/backward chunk when a request "
                             f"sets no internal_batch_size (default {DEFAULT_CHUNK_TOKENS}: 64 tokens x 50 steps in "
                             "one pass, a 512-token bert-base request under 4 GB on CPU; 0: all steps at once)")
    limits.add_argument("--max-body-bytes", type=int, default=1_048_576, metavar="N",
                        help="largest request body accepted, in bytes (default 1 MB)")
    limits.add_argument("--response-timeout", type=int, default=None, metavar="S",
                        help="seconds a worker may take for one batch (default from config.properties)")
    limits.add_argument("--startup-timeout", type=int, default=None, metavar="S",
                        help="seconds a worker may take to load the model (default from config.properties)")

    server = parser.add_argument_group("server")
    server.add_argument("-h", "--host", default=None,
                        help="address to bind (default 127.0.0.1; 0.0.0.0 for every interface, token auth on)")
    server.add_argument("-p", "--port", type=int, default=8888, help="inference port (default 8888)")
    server.add_argument("--management-port", type=int, default=None, metavar="PORT",
                        help="management API port (default PORT+1)")
    server.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="metrics port (default PORT+2; gRPC takes the two after it)")
    server.add_argument("--model-store", default=None, metavar="DIR", help="where the .mar files go (default model_store/)")
    server.add_argument("--run-dir", default=None, metavar="DIR",
                        help="the run's config, logs and temp files (default logs/serve-PORT/)")
    server.add_argument("--ts-config", default=None, metavar="FILE",
                        help="TorchServe config.properties to start from (default: the project's config.properties)")
    server.add_argument("--token-expiration-min", type=int, default=None, metavar="MIN",
                        help="lifetime of the auth keys when token auth is on")
    server.add_argument("--ready-timeout", type=float, default=900, metavar="S",
                        help="give up if the workers are not ready after this many seconds (default 900)")
    server.add_argument("--rebuild", action="store_true", help="rebuild the archives even when they look current")
    server.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops the server")
    server.add_argument("--stop", action="store_true", help="stop the server on -p PORT (or --run-dir) and exit")
    server.add_argument("--help", action="help", help="show this help and exit")
    parser.set_defaults(cuda=False)
    return parser


@dataclass
class ModelSpec:
    key: str
    family: str
    weights: Path
    name: str
    tokenizer: str | None = None
    config: Path | None = None
    extra: dict = field(default_factory=dict)


def _keyed(values: list[str], flag: str, keys: list[str]) -> dict:
    """``--flag VALUE`` (one model) or ``--flag KEY=VALUE``; returns {key: value}."""
    out = {}
    for value in values:
        head, sep, rest = value.partition("=")
        if sep and head in MODEL_KEYS:
            if head not in keys:
                raise LaunchError(f"{flag} {value}: no {FLAG_OF[head]} model is being served")
            key, value = head, rest
        elif len(keys) == 1:
            key = keys[0]
        else:
            raise LaunchError(f"{flag} {value}: several models are served; say which one, e.g. "
                              f"{flag} {keys[0]}={value}")
        if key in out:
            raise LaunchError(f"{flag} given twice for the {key} model")
        out[key] = value
    return out


def model_specs(args, model_store: Path) -> list[ModelSpec]:
    given = {"bert": args.bert_path, "xlnet-base": args.xlnet_base_path, "xlnet-large": args.xlnet_large_path,
             "hf": args.hf_model}
    keys = [key for key in MODEL_KEYS[:4] if given[key]] + (["demo"] if args.demo else [])
    if not keys:
        raise LaunchError("no model given: pass -bp/--bert-path, -xlb/--xlnet-base-path, -xll/--xlnet-large-path, "
                          "--hf-model DIR or --demo (see --help)", code=2)
    tokenizers = _keyed(args.tokenizer, "--tokenizer", keys)
    configs = _keyed(args.config, "--config", keys)
    names = _keyed(args.model_name, "--model-name", keys)
    specs = []
    for key in keys:
        if key == "demo":
            weights = ensure_demo(model_store)
        else:
            weights = Path(given[key]).expanduser()
            if key == "hf":
                if not (weights / "config.json").is_file():
                    raise LaunchError(f"--hf-model {weights}: not a save_pretrained directory (no config.json there)")
            elif not weights.is_file():
                raise LaunchError(f"{FLAG_OF[key]} {weights}: no such file; give the path of the model's state-dict "
                                  ".pth file")
        name = names.get(key, key)
        if not NAME_PATTERN.match(name):
            raise LaunchError(f"--model-name {name!r}: use letters, digits, '_', '.', '-' (at most 64)")
        config = None
        if key in configs:
            config = Path(configs[key]).expanduser()
            if config.is_dir():
                config = config / "config.json"
            if not config.is_file():
                raise LaunchError(f"--config {configs[key]}: no config.json there")
        tokenizer = tokenizers.get(key)
        if tokenizer is not None and Path(tokenizer).expanduser().exists():
            tokenizer_path = Path(tokenizer).expanduser()
            if not tokenizer_path.is_dir():
                raise LaunchError(f"--tokenizer {tokenizer}: give the tokenizer's directory (save_pretrained), "
                                  "not a file")
            tokenizer = str(tokenizer_path.resolve())
        elif tokenizer is not None and (tokenizer.startswith((".", "/", "~")) or tokenizer.count("/") > 1):
            raise LaunchError(f"--tokenizer {tokenizer}: no such directory")
        specs.append(ModelSpec(key=key, family=FAMILY_OF[key], weights=weights.resolve(), name=name,
                               tokenizer=tokenizer, config=config.resolve() if config else None))
    seen = {}
    for spec in specs:
        if spec.name in seen:
            raise LaunchError(f"two models are named {spec.name!r}: give one another --model-name")
        seen[spec.name] = spec
    return specs


def ensure_demo(model_store: Path) -> Path:
    try:
        from intgrads import demo
    except ImportError as error:
        raise LaunchError(f"--demo is not available in this installation ({error})") from None
    cached = model_store / demo.DEMO_NAME
    fresh = not demo.is_complete(cached)
    if fresh:
        print(f"intgrads: building the demo model into {cached} (first use only, offline; about a minute)...",
              flush=True)
    started = time.time()
    try:
        path = Path(demo.ensure_demo_model(model_store)).resolve()
    except Exception as error:  # noqa: BLE001
        raise LaunchError(f"could not build the demo model: {type(error).__name__}: {error}") from None
    if fresh:
        print(f"intgrads: demo model built in {time.time() - started:.1f} s", flush=True)
    return path


# ---------------------------------------------------------------------------------------------- config.properties
def read_properties(path: Path) -> dict:
    props = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def is_loopback(host: str) -> bool:
    if host in ("localhost", "::1") or host.startswith("127."):
        return True
    return False


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def public_host(host: str) -> str:
    """The address to print in the curl: the host itself, or this machine's address for 0.0.0.0 / ::."""
    if host not in ("0.0.0.0", "::", ""):
        return host
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))   # no packet is sent; picks the outgoing interface
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostname()


@dataclass
class Ports:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int

    def items(self):
        return [("inference", self.inference), ("management", self.management), ("metrics", self.metrics),
                ("gRPC inference", self.grpc_inference), ("gRPC management", self.grpc_management)]


def choose_ports(args) -> Ports:
    port = args.port
    management = args.management_port or port + 1
    metrics = args.metrics_port or port + 2
    grpc = max(port, management, metrics) + 1
    ports = Ports(port, management, metrics, grpc, grpc + 1)
    values = [value for _, value in ports.items()]
    if len(set(values)) != len(values):
        raise LaunchError(f"the ports collide ({', '.join(f'{n} {v}' for n, v in ports.items())}): choose distinct "
                          "-p, --management-port and --metrics-port")
    for name, value in ports.items():
        if not 1 <= value <= 65535:
            raise LaunchError(f"{name} port {value} is not a valid port")
    return ports


def check_ports_free(host: str, ports: Ports):
    bind_host = "" if host in ("0.0.0.0", "::") else host
    for name, value in ports.items():
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((bind_host, value))
            except OSError as error:
                raise LaunchError(
                    f"the {name} port {value} on {host or '*'} is taken ({error.strerror}). Another server may be "
                    f"running there: stop it ({program()} --stop -p {ports.inference}, if it is ours) or choose other "
                    "ports with -p PORT (management, metrics and gRPC follow PORT unless given)") from None


def write_run_config(path: Path, base: dict, *, host: str, ports: Ports, model_store: Path, mar_names: list[str],
                     token_auth: bool, args, source: str):
    props = dict(base)
    h = url_host(host)
    props.update({
        "inference_address": f"http://{h}:{ports.inference}",
        "management_address": f"http://{h}:{ports.management}",
        "metrics_address": f"http://{h}:{ports.metrics}",
        "grpc_inference_address": host,
        "grpc_management_address": host,
        "grpc_inference_port": str(ports.grpc_inference),
        "grpc_management_port": str(ports.grpc_management),
        "model_store": str(model_store),
        "load_models": ",".join(mar_names),
        "disable_token_authorization": "false" if token_auth else "true",
        "enable_model_api": "false",
        "allowed_urls": "file://" + re.escape(str(model_store)) + r"/[^/]+\.mar",
        "install_py_dep_per_model": "false",
        "number_of_gpu": str(args.num_cuda_devs if args.cuda else 0),
    })
    if args.token_expiration_min:
        props["token_expiration_min"] = str(args.token_expiration_min)
    lines = [f"# Written by the intgrads launcher from {source} and its flags; edit that file, not this one."]
    lines += [f"{key}={value}" for key, value in props.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return props


# ---------------------------------------------------------------------------------------------- archives
def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return True


def _link(link: Path, target: Path):
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        else:
            link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def _files_under(path: Path):
    if path.is_file():
        yield path
        return
    for root, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
        for name in files:
            if not name.endswith((".pyc", ".tmp")):
                yield Path(root) / name


def _newest_mtime(paths) -> float:
    newest = 0.0
    for path in paths:
        for item in _files_under(path):
            try:
                newest = max(newest, item.stat().st_mtime)
            except OSError:
                pass
    return newest


def archive_settings(spec: ModelSpec, args, tokenizer_in_archive: str | None, config_props: dict) -> dict:
    workers = args.workers_per_gpu * args.num_cuda_devs if args.cuda else args.workers
    target = args.target if args.target == "predicted" else int(args.target)
    model_config = {
        "minWorkers": workers,
        "maxWorkers": workers,
        "batchSize": args.batch_size,
        "maxBatchDelay": args.max_batch_delay,
        "responseTimeout": int(args.response_timeout or config_props.get("default_response_timeout", 1800)),
        "startupTimeout": int(args.startup_timeout or config_props.get("default_startup_timeout", 600)),
        "deviceType": "gpu" if args.cuda else "cpu",
    }
    if args.cuda:
        model_config["deviceIds"] = list(range(args.num_cuda_devs))
    model_config["intgrads"] = {
        "family": spec.family,
        "weights": "weights" if spec.family == "hf" else "weights/model.pth",
        "config": "config/config.json" if spec.config else None,
        "tokenizer": tokenizer_in_archive,
        "tokenizer_name": None,
        "layer": None,
        "device": "cuda" if args.cuda else "cpu",
        "torch_threads": 0,
        "defaults": {"target": target, "n_steps": args.n_steps, "method": args.method, "baseline": args.baseline,
                     "keep_special_tokens": False, "internal_batch_size": None},
        "limits": {"max_steps": args.max_steps, "max_tokens": args.max_tokens, "max_sequences": args.max_sequences,
                   "max_chars": args.max_chars, "max_body_bytes": args.max_body_bytes,
                   "chunk_tokens": args.chunk_tokens,
                   "max_response_bytes": int(config_props.get("max_response_size", 1073741824))},
    }
    return model_config


def build_archive(spec: ModelSpec, args, model_store: Path, config_props: dict, archiver: str) -> tuple[Path, bool]:
    """Build model_store/<name>.mar unless it is newer than every input; returns (path, rebuilt)."""
    import yaml

    build = model_store / ".build" / spec.name
    extra = build / "extra"
    extra.mkdir(parents=True, exist_ok=True)
    mar = model_store / f"{spec.name}.mar"

    # Tokenizer: a directory is packed as is; a hub name is resolved once into the build directory.
    tokenizer_in_archive = None
    tokenizer_source = None
    if spec.tokenizer and Path(spec.tokenizer).is_dir():
        tokenizer_source = Path(spec.tokenizer)
    elif spec.family != "hf":
        name = spec.tokenizer or _default_tokenizer(spec.family)
        tokenizer_source = build / "resolved-tokenizer"
        marker = tokenizer_source / ".intgrads-source"
        if not (marker.is_file() and marker.read_text() == name):
            resolve_hub_tokenizer(spec, name, tokenizer_source)
            marker.write_text(name)
    elif spec.tokenizer:
        raise LaunchError(f"--tokenizer {spec.tokenizer}: no such directory (tokenizers are read offline)")
    tokenizer_files = []
    if (extra / "tokenizer").is_symlink() or (extra / "tokenizer").is_file():
        (extra / "tokenizer").unlink()
    shutil.rmtree(extra / "tokenizer", ignore_errors=True)
    if tokenizer_source is not None:
        tokenizer_files = tokenizer_file_list(tokenizer_source)
        for item in tokenizer_files:
            _link(extra / "tokenizer" / item.name, item.resolve())
        tokenizer_in_archive = "tokenizer"

    if spec.family == "hf":
        weights_dir = Path(spec.weights)
        check_links_inside(weights_dir, [Path(root) / name for root, dirs, files in os.walk(weights_dir)
                                         for name in dirs + files], "--hf-model")
        _link(extra / "weights", spec.weights)
    else:
        if (extra / "weights").is_symlink():
            (extra / "weights").unlink()
        _link(extra / "weights" / "model.pth", spec.weights)
    if spec.config:
        if (extra / "config").is_symlink():
            (extra / "config").unlink()
        _link(extra / "config" / "config.json", spec.config)
    elif (extra / "config").exists() or (extra / "config").is_symlink():
        shutil.rmtree(extra / "config") if not (extra / "config").is_symlink() else (extra / "config").unlink()
    _link(extra / "intgrads", PACKAGE_DIR)

    settings = archive_settings(spec, args, tokenizer_in_archive, config_props)
    config_file = build / "model-config.yaml"
    _write_if_changed(config_file, "# Written by the intgrads launcher.\n" + yaml.safe_dump(settings, sort_keys=False))
    requirements = build / "requirements.txt"
    _write_if_changed(requirements, "\n".join(RUNTIME_REQUIREMENTS) + "\n")
    handler = handler_file()
    inputs = {
        "weights": str(spec.weights), "config": str(spec.config) if spec.config else None,
        "tokenizer": str(tokenizer_source) if tokenizer_source else None, "handler": str(handler),
        "tokenizer_files": [item.name for item in tokenizer_files],
        "engine": str(PACKAGE_DIR),
    }
    _write_if_changed(build / "inputs.json", json.dumps(inputs, indent=1, sort_keys=True) + "\n")
    watched = [handler, PACKAGE_DIR, config_file, requirements, build / "inputs.json", spec.weights]
    if spec.config:
        watched.append(spec.config)
    watched += tokenizer_files
    if mar.is_file() and not args.rebuild and mar.stat().st_mtime > _newest_mtime(watched):
        return mar, False

    validate_model(spec, extra / "tokenizer" if tokenizer_files else None, settings["intgrads"]["defaults"]["target"])
    started = time.time()
    tmp_store = build / "out"
    shutil.rmtree(tmp_store, ignore_errors=True)
    tmp_store.mkdir()
    command = [archiver, "--model-name", spec.name, "--version", "1.0", "--handler", str(handler),
               "--extra-files", str(extra), "--config-file", str(config_file), "--requirements-file", str(requirements),
               "--export-path", str(tmp_store), "--archive-format", "zip-store", "--force"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise LaunchError(f"torch-model-archiver failed for {spec.name} (exit {result.returncode})",
                          log_tail=(result.stdout + result.stderr)[-4000:])
    os.replace(tmp_store / f"{spec.name}.mar", mar)
    shutil.rmtree(tmp_store, ignore_errors=True)
    print(f"intgrads: built {mar} ({mar.stat().st_size / 1e6:.1f} MB) in {time.time() - started:.1f} s", flush=True)
    return mar, True


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".h5", ".msgpack", ".onnx", ".ot", ".gguf")
SKIPPED_NAMES = ("README.md", ".gitattributes")


def tokenizer_file_list(directory: Path) -> list[Path]:
    """The files of a tokenizer directory worth packing: its top-level files, less model weights (a tokenizer
    directory is often a whole model directory) and documentation."""
    files = sorted(item for item in directory.iterdir() if item.is_file() and not item.name.startswith(".")
                   and not item.name.endswith(WEIGHT_SUFFIXES) and item.name not in SKIPPED_NAMES)
    if not files:
        raise LaunchError(f"--tokenizer {directory}: the directory holds no tokenizer files")
    check_links_inside(directory, files, "--tokenizer")
    return files


def check_links_inside(directory: Path, items, flag: str):
    """Refuse (exit 2) any of ``items`` (paths under ``directory``) that resolves outside it: a link out of
    the directory is not followed, nor packed into the archive. A Hugging Face cache snapshot
    (snapshots/<rev>/NAME -> ../../blobs/HASH) may point into its own blobs/ folder."""
    roots = [directory.resolve()]
    if directory.resolve().parent.name == "snapshots":
        roots.append(directory.resolve().parent.parent / "blobs")
    for item in items:
        target = Path(item).resolve()
        if not any(target == root or root in target.parents for root in roots):
            raise LaunchError(f"{flag} {directory}: {Path(item).relative_to(directory)} leads outside the directory (to {target}); "
                              "copy the file into the directory instead of linking to it", code=2)


def _default_tokenizer(family: str) -> str:
    from intgrads.families import DEFAULT_TOKENIZERS

    return DEFAULT_TOKENIZERS[family]


def resolve_hub_tokenizer(spec: ModelSpec, name: str, directory: Path):
    from intgrads.models import load_tokenizer

    print(f"intgrads: resolving tokenizer {name!r} for {spec.name} (once; it is packed into the archive)", flush=True)
    try:
        tokenizer = load_tokenizer(spec.family, name)
    except Exception as error:  # noqa: BLE001
        raise LaunchError(
            f"could not get the tokenizer {name!r} for the {spec.key} model ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). Without network access, pass the tokenizer's "
            f"directory: --tokenizer {spec.key}=/path/to/tokenizer (a save_pretrained directory, or one holding "
            f"{'vocab.txt' if spec.family == 'bert' else 'spiece.model'})") from None
    shutil.rmtree(directory, ignore_errors=True)
    tokenizer.save_pretrained(str(directory))


def validate_model(spec: ModelSpec, tokenizer_source: Path | None, target=None):
    """Load the model once here, so that a wrong file, config or tokenizer is reported before TorchServe starts."""
    import intgrads
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.time()
    try:
        bundle = intgrads.load_model(spec.family, spec.weights, config=spec.config,
                                     tokenizer=str(tokenizer_source) if tokenizer_source else None)
    except Exception as error:  # noqa: BLE001
        raise LaunchError(f"cannot load the {spec.key} model from {spec.weights}: {type(error).__name__}: {error}"
                          + ("" if spec.config else " (if the model is not the family's standard size, pass its "
                             "config.json with --config)"), code=2) from None
    if isinstance(target, int) and target >= bundle.num_labels:
        raise LaunchError(f"--target {target}: the {spec.key} model has {bundle.num_labels} labels "
                          f"(0..{bundle.num_labels - 1}); give one of them or 'predicted'", code=2)
    print(f"intgrads: checked {spec.name}: {bundle.family} ({bundle.layout} layout), {bundle.num_labels} labels, "
          f"layer {bundle.layer_name} ({time.time() - started:.1f} s)", flush=True)
    del bundle


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


def check_java():
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise LaunchError("Java is not installed; TorchServe needs Java 17: e.g. sudo apt-get install "
                          "openjdk-17-jre-headless (or set JAVA_HOME)")
    try:
        output = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LaunchError(f"could not run {java} -version ({error}): install Java 17") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):
            major = int(match.group(2))
        if major < 11:
            raise LaunchError(f"{java} is Java {major}; TorchServe needs Java 17: install openjdk-17-jre-headless "
                              "and put it first on PATH (or set JAVA_HOME)")


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def pid_alive(pid: int) -> bool:
    if pid <= 0:   # os.kill(-1 or 0, ...) would address whole process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def http_json(url: str, token: str | None = None, method: str = "GET", timeout: float = 5):
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8") or "null")


def read_keys(run_dir: Path) -> dict:
    path = run_dir / "key_file.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {kind: (data.get(kind) or {}).get("key") for kind in ("management", "inference", "API")}


@dataclass
class RunPaths:
    run_dir: Path

    @property
    def tmp(self) -> Path:
        return self.run_dir / "tmp"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def pid_file(self) -> Path:
        return self.tmp / ".model_server.pid"

    @property
    def state(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def config(self) -> Path:
        return self.run_dir / "config.properties"

    @property
    def model_log(self) -> Path:
        return self.logs / "model_log.log"

    @property
    def ts_log(self) -> Path:
        return self.logs / "ts_log.log"

    @property
    def stdout(self) -> Path:
        return self.logs / "torchserve.out"


def server_pid(paths: RunPaths) -> int | None:
    try:
        pid = int(paths.pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid_alive(pid) and "org.pytorch.serve.ModelServer" in _cmdline(pid):
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
               token_auth: bool, log_offset: int) -> dict:
    """Poll /ping and the management API until every model has its workers READY; returns worker info."""
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
                described = http_json(f"{base}:{ports.management}/models/{name}", token=key, timeout=5)
                info = described[0] if isinstance(described, list) and described else {}
                workers = info.get("workers") or []
                ready = [w for w in workers if w.get("status") == "READY"]
                last[name] = {"ready": len(ready), "wanted": wanted, "workers": workers}
                if len(ready) < wanted:
                    ready_all = False
        except (urllib.error.URLError, OSError, ValueError):
            ready_all = False
        if ready_all:
            return last
        if time.time() > deadline:
            status = ", ".join(f"{n}: {v['ready']}/{v['wanted']} ready" for n, v in last.items()) or "not answering"
            raise LaunchError(f"the workers were not ready after {timeout:.0f} s ({status}); a big model on a slow "
                              "machine may need a longer --ready-timeout / --startup-timeout",
                              log_tail=log_tails(paths))
        time.sleep(0.5)


def connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)


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
        if not quiet:
            print(f"intgrads: no server is running for {paths.run_dir}")
        _kill_workers(worker_pids)
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
    for leftover in (paths.pid_file, paths.run_dir / "key_file.json"):
        try:
            leftover.unlink()
        except OSError:
            pass
    if state:
        state["stopped_at"] = time.time()
        paths.state.write_text(json.dumps(state, indent=1), encoding="utf-8")
    if not quiet:
        print(f"intgrads: stopped the server on port {state.get('ports', {}).get('inference', '?')} (pid {pid})")
    return True


def _live_worker_pids(state: dict, paths: RunPaths) -> set:
    pids = set()
    ports = state.get("ports") or {}
    if not ports:
        return pids
    key = read_keys(paths.run_dir).get("management") if state.get("token_auth") else None
    base = f"http://{url_host(connect_host(state.get('host', '127.0.0.1')))}:{ports.get('management')}"
    for name in state.get("models", {}):
        try:
            described = http_json(f"{base}/models/{name}", token=key, timeout=3)
            for worker in (described[0].get("workers") or []):
                if int(worker.get("pid") or 0) > 0:   # -1: a worker not started yet
                    pids.add(int(worker["pid"]))
        except (urllib.error.URLError, OSError, ValueError, IndexError, AttributeError):
            pass
    return pids


def _kill_workers(pids):
    """TorchServe's Python workers, should any outlive the frontend (only processes that are workers)."""
    alive = [pid for pid in pids if pid_alive(pid) and "model_service_worker" in _cmdline(pid)]
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


# ---------------------------------------------------------------------------------------------- main
def run_paths(args, home: Path) -> RunPaths:
    run_dir = Path(args.run_dir).expanduser() if args.run_dir else home / "logs" / f"serve-{args.port}"
    return RunPaths(run_dir.resolve())


def curl_lines(base: str, name: str, token: str | None) -> list[str]:
    auth = f" -H \"Authorization: Bearer {token}\"" if token else ""
    return [
        f"  curl {base}/predictions/{name}{auth} -H 'Content-Type: application/json' "
        f"-d '{{\"sequence\": \"{EXAMPLE_SENTENCE}\"}}' --output saved_file.gzip",
    ]


def start(args) -> int:
    home = project_home()
    paths = run_paths(args, home)
    model_store = Path(args.model_store).expanduser().resolve() if args.model_store else home / "model_store"
    host = args.host or "127.0.0.1"
    token_auth = not is_loopback(host)

    if args.cuda:
        if args.num_cuda_devs < 1 or args.workers_per_gpu < 1:
            raise LaunchError("--num-cuda-devs and --workers-per-gpu must be at least 1", code=2)
    elif args.workers is not None and args.workers < 1:
        raise LaunchError("--workers must be at least 1", code=2)
    for flag, value in (("--batch-size", args.batch_size), ("--max-steps", args.max_steps),
                        ("--max-tokens", args.max_tokens), ("--max-sequences", args.max_sequences),
                        ("--max-chars", args.max_chars), ("--max-body-bytes", args.max_body_bytes)):
        if value < 1:
            raise LaunchError(f"{flag} must be at least 1", code=2)
    if args.chunk_tokens is not None and args.chunk_tokens < 0:
        raise LaunchError("--chunk-tokens must be 0 (all steps at once) or more", code=2)
    if args.max_batch_delay < 0:
        raise LaunchError("--max-batch-delay must be 0 or more", code=2)
    ports = choose_ports(args)
    check_defaults(args)

    running = server_pid(paths)
    if running:
        raise LaunchError(f"an intgrads server is already running for {paths.run_dir} (pid {running}): stop it with "
                          f"{program()} --stop -p {args.port}, or pick another -p", code=1)
    archiver = find_tool("torch-model-archiver")
    torchserve = find_tool("torchserve")
    check_java()
    check_ports_free(host, ports)
    if args.cuda:
        check_cuda(args)

    model_store.mkdir(parents=True, exist_ok=True)
    specs = model_specs(args, model_store)
    workers = resolve_workers(args, len(specs))
    base_config = Path(args.ts_config).expanduser() if args.ts_config else default_config_properties()
    if args.ts_config and not base_config.is_file():
        raise LaunchError(f"--ts-config {args.ts_config}: no such file", code=2)
    base_props = read_properties(base_config) if base_config else {}

    mars = []
    for spec in specs:
        mar, _ = build_archive(spec, args, model_store, base_props, archiver)
        mars.append(mar.name)

    for path in (paths.run_dir, paths.tmp, paths.logs):
        path.mkdir(parents=True, exist_ok=True)
    for stale in (paths.run_dir / "key_file.json",):
        stale.unlink(missing_ok=True) if stale.exists() else None
    props = write_run_config(paths.config, base_props, host=host, ports=ports, model_store=model_store,
                             mar_names=mars, token_auth=token_auth, args=args,
                             source=str(base_config) if base_config else "built-in defaults")
    total_workers = workers * len(specs)
    threads = max(1, usable_cores() // total_workers)
    env = dict(os.environ)
    env.update({"TMPDIR": str(paths.tmp), "TEMP": str(paths.tmp), "LOG_LOCATION": str(paths.logs),
                "METRICS_LOCATION": str(paths.logs), "PYTHONUNBUFFERED": "1",
                "INTGRADS_TORCH_THREADS": os.environ.get("INTGRADS_TORCH_THREADS", str(threads)),
                "INTGRADS_MAX_RESPONSE_BYTES": props.get("max_response_size", "1073741824"),
                "TS_DECODE_INPUT_REQUEST": props.get("decode_input_request", "false")})
    env.pop("TS_CONFIG_FILE", None)
    command = [torchserve, "--start", "--ts-config", str(paths.config), "--model-store", str(model_store), "--ncs"]
    if not token_auth:
        command.append("--disable-token-auth")
    if args.foreground:
        command.append("--foreground")
    log_offset = paths.model_log.stat().st_size if paths.model_log.is_file() else 0

    started = time.time()
    print(f"intgrads: starting TorchServe on {host}:{ports.inference} with {', '.join(s.name for s in specs)} "
          f"({workers} worker(s) each, {'cuda' if args.cuda else 'cpu'}); logs in {paths.logs}", flush=True)
    out = open(paths.stdout, "ab")
    wrapper = subprocess.Popen(command, cwd=paths.run_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    out.close()
    pid = None
    deadline = time.time() + 60
    while pid is None and time.time() < deadline:
        pid = server_pid(paths)
        if pid is None:
            if wrapper.poll() is not None and not args.foreground and wrapper.returncode != 0:
                break
            time.sleep(0.2)
    if pid is None:
        wrapper.poll()
        raise LaunchError("TorchServe did not start (no frontend process)", log_tail=log_tails(paths))

    state = {"pid": pid, "host": host, "ports": ports.__dict__, "run_dir": str(paths.run_dir),
             "model_store": str(model_store), "token_auth": token_auth, "started_at": started,
             "device": "cuda" if args.cuda else "cpu",
             "models": {spec.name: {"key": spec.key, "family": spec.family, "workers": workers} for spec in specs}}
    paths.state.write_text(json.dumps(state, indent=1), encoding="utf-8")
    try:
        info = wait_ready(paths, pid, host, ports, {spec.name: workers for spec in specs}, args.ready_timeout,
                          token_auth, log_offset)
    except LaunchError:
        stop_server(paths, quiet=True)
        raise
    except KeyboardInterrupt:
        stop_server(paths, quiet=True)
        raise
    state["worker_pids"] = sorted({int(w["pid"]) for v in info.values() for w in v["workers"] if int(w.get("pid") or 0) > 0})
    state["ready_at"] = time.time()
    paths.state.write_text(json.dumps(state, indent=1), encoding="utf-8")

    keys = read_keys(paths.run_dir) if token_auth else {}
    shown_host = url_host(public_host(host))
    base = f"http://{shown_host}:{ports.inference}"
    print(f"\nintgrads: ready in {time.time() - started:.1f} s: TorchServe pid {pid}, run directory {paths.run_dir}")
    for spec in specs:
        print(f"  {spec.name}: {spec.family} from {spec.weights} -> {base}/predictions/{spec.name} "
              f"({info[spec.name]['ready']} worker(s), {'cuda' if args.cuda else 'cpu'})")
    print("\nGet the attributions of a sentence (a gzip of the torch.save'd dict):")
    for spec in specs:
        for line in curl_lines(base, spec.name, keys.get("inference")):
            print(line)
    first = specs[0].name
    print(f"A JSON summary instead: add -H 'Accept: application/json' (or POST to {base}/explanations/{first})")
    if token_auth:
        print(f"\nToken auth is on (host {host}). Inference key: {keys.get('inference')}  "
              f"management key: {keys.get('management')}\n  (both in {paths.run_dir / 'key_file.json'}; "
              f"they expire after {props.get('token_expiration_min', '60')} min)")
        if host in ("0.0.0.0", "::"):
            print("  Use the address of this machine that clients can reach (hostname -I lists them).")
    mauth = f" -H \"Authorization: Bearer {keys.get('management')}\"" if token_auth else ""
    print(f"Scale: curl -X PUT{mauth} 'http://{shown_host}:{ports.management}/models/{first}?min_worker=2"
          "&synchronous=true'")
    stop_hint = f"{program()} --stop -p {args.port}" + (f" --run-dir {paths.run_dir}" if args.run_dir else "")
    print(f"Stop:  {stop_hint}", flush=True)

    if not args.foreground:
        return 0
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


def check_defaults(args):
    from intgrads.baselines import BASELINES
    from intgrads.quadrature import METHODS, min_steps

    if args.method not in METHODS:
        raise LaunchError(f"--method {args.method}: choose one of {', '.join(METHODS)}", code=2)
    if args.baseline not in BASELINES:
        raise LaunchError(f"-b/--baseline {args.baseline}: choose one of {', '.join(BASELINES)}", code=2)
    if not (min_steps(args.method) <= args.n_steps <= args.max_steps):
        raise LaunchError(f"--n-steps {args.n_steps}: must be from {min_steps(args.method)} to --max-steps "
                          f"({args.max_steps}) for {args.method}", code=2)
    if args.target != "predicted":
        try:
            if int(args.target) < 0:
                raise ValueError
        except ValueError:
            raise LaunchError(f"--target {args.target}: give a class index (0, 1, ...) or 'predicted'", code=2) from None


def check_cuda(args):
    import torch

    if not torch.cuda.is_available():
        raise LaunchError("--cuda: torch sees no CUDA device here (driver, CUDA build of torch, "
                          "CUDA_VISIBLE_DEVICES?); run with --cpu instead", code=2)
    count = torch.cuda.device_count()
    if args.num_cuda_devs > count:
        raise LaunchError(f"--num-cuda-devs {args.num_cuda_devs}: only {count} GPU(s) visible", code=2)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.stop:
            stop_server(run_paths(args, project_home()))
            return 0
        return start(args)
    except LaunchError as error:
        print(f"intgrads: error: {error.message}", file=sys.stderr)
        if error.log_tail:
            print(error.log_tail, file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("intgrads: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
