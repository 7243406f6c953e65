"""Building a model's TorchServe archive (model_store/<name>.mar): the handler, the engine, answer and
serving code, weights, config, tokenizer files and model-config.yaml, rebuilt only when an input changed.
The model is loaded once first, so that a wrong file, config or tokenizer is reported before TorchServe starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .paths import PACKAGE_DIR, LaunchError, handler_file
from .specs import ModelSpec

RUNTIME_REQUIREMENTS = ("transformers>=5,<6", "sentencepiece", "protobuf", "safetensors", "isal", "pyyaml")
# What of the intgrads package goes into an archive: the engine, the answer format, serving and the system
# helpers; the launcher, the client and the pictures stay out.
ARCHIVED_PARTS = ("__init__.py", "system.py", "engine", "answer", "serving")


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
                     "keep_special_tokens": False, "internal_batch_size": None, "precision": "float32"},
        "limits": {"max_steps": args.max_steps, "max_tokens": args.max_tokens, "max_sequences": args.max_sequences,
                   "max_chars": args.max_chars, "max_body_bytes": args.max_body_bytes,
                   "chunk_tokens": args.chunk_tokens,
                   "gzip_level": gzip_level(args), "max_work": getattr(args, "max_work", None),
                   "max_response_bytes": int(config_props.get("max_response_size", 1073741824))},
    }
    return model_config


def gzip_level(args) -> int:
    """--gzip-level, else 0 (stored): deflating costs the server and every client more CPU than the bytes it
    saves are worth, on a GPU and on a CPU alike (docs/benchmarks.md, part 15)."""
    level = getattr(args, "gzip_level", None)
    return level if level is not None else 0


def build_archive(spec: ModelSpec, args, model_store: Path, config_props: dict, archiver: str) -> tuple[Path, bool]:
    """Build model_store/<name>.mar unless it is newer than every input; returns (path, rebuilt)."""
    import yaml

    build = model_store / ".build" / spec.name
    extra = build / "extra"
    extra.mkdir(parents=True, exist_ok=True)
    mar = model_store / f"{spec.name}.mar"

    tokenizer_source = tokenizer_directory(spec, build)
    tokenizer_files = _link_tokenizer(extra, tokenizer_source)
    _link_weights_and_config(spec, extra)
    code = _link_code(extra / "intgrads")

    settings = archive_settings(spec, args, "tokenizer" if tokenizer_files else None, config_props)
    config_file = build / "model-config.yaml"
    _write_if_changed(config_file, "# Written by the intgrads launcher.\n" + yaml.safe_dump(settings, sort_keys=False))
    requirements = build / "requirements.txt"
    _write_if_changed(requirements, "\n".join(RUNTIME_REQUIREMENTS) + "\n")
    handler = handler_file()
    inputs = {
        "weights": str(spec.weights), "config": str(spec.config) if spec.config else None,
        "tokenizer": str(tokenizer_source) if tokenizer_source else None, "handler": str(handler),
        "tokenizer_files": [item.name for item in tokenizer_files],
        "engine": [str(path) for path in code],
    }
    _write_if_changed(build / "inputs.json", json.dumps(inputs, indent=1, sort_keys=True) + "\n")
    watched = [handler, *code, config_file, requirements, build / "inputs.json", spec.weights, *tokenizer_files]
    if spec.config:
        watched.append(spec.config)
    if mar.is_file() and not args.rebuild and mar.stat().st_mtime > _newest_mtime(watched):
        return mar, False

    validate_model(spec, extra / "tokenizer" if tokenizer_files else None, settings["intgrads"]["defaults"]["target"])
    _pack(spec, archiver, handler, extra, config_file, requirements, build / "out", mar)
    return mar, True


def tokenizer_directory(spec: ModelSpec, build: Path) -> Path | None:
    """The tokenizer's directory: one given is used as is; a hub name is resolved once into ``build``
    (resolved-tokenizer/); None for an hf model, whose own directory holds its tokenizer."""
    if spec.tokenizer and Path(spec.tokenizer).is_dir():
        return Path(spec.tokenizer)
    if spec.family != "hf":
        name = spec.tokenizer or _default_tokenizer(spec.family)
        resolved = build / "resolved-tokenizer"
        marker = resolved / ".intgrads-source"
        if not (marker.is_file() and marker.read_text() == name):
            resolve_hub_tokenizer(spec, name, resolved)
            marker.write_text(name)
        return resolved
    if spec.tokenizer:
        raise LaunchError(f"--tokenizer {spec.tokenizer}: no such directory (tokenizers are read offline)")
    return None   # an hf model's own directory holds its tokenizer


def _link_tokenizer(extra: Path, source: Path | None) -> list[Path]:
    if (extra / "tokenizer").is_symlink() or (extra / "tokenizer").is_file():
        (extra / "tokenizer").unlink()
    shutil.rmtree(extra / "tokenizer", ignore_errors=True)
    if source is None:
        return []
    files = tokenizer_file_list(source)
    for item in files:
        _link(extra / "tokenizer" / item.name, item.resolve())
    return files


def _link_weights_and_config(spec: ModelSpec, extra: Path):
    if spec.family == "hf":
        weights_dir = Path(spec.weights)
        check_links_inside(weights_dir, [Path(root) / name for root, dirs, files in os.walk(weights_dir)
                                         for name in dirs + files], "--hf-model")
        _link(extra / "weights", spec.weights)
    else:
        if (extra / "weights").is_symlink():
            (extra / "weights").unlink()
        _link(extra / "weights" / "model.pth", spec.weights)
    config = extra / "config"
    if spec.config:
        if config.is_symlink():
            config.unlink()
        _link(config / "config.json", spec.config)
    elif config.is_symlink():
        config.unlink()
    elif config.exists():
        shutil.rmtree(config)


def _link_code(target: Path) -> list[Path]:
    """Link the parts of the intgrads package that workers run (ARCHIVED_PARTS) into ``target``."""
    if target.is_symlink():
        target.unlink()
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.iterdir():
        if stale.name not in ARCHIVED_PARTS:
            stale.unlink() if stale.is_symlink() or stale.is_file() else shutil.rmtree(stale)
    parts = [PACKAGE_DIR / name for name in ARCHIVED_PARTS]
    for part in parts:
        _link(target / part.name, part)
    return parts


def _pack(spec, archiver, handler, extra, config_file, requirements, tmp_store: Path, mar: Path):
    started = time.time()
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
    from ..engine.families import DEFAULT_TOKENIZERS

    return DEFAULT_TOKENIZERS[family]


def resolve_hub_tokenizer(spec: ModelSpec, name: str, directory: Path):
    from ..engine.models import load_tokenizer

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


def validate_model(spec: ModelSpec, tokenizer_source: Path | None, target=None, say=None) -> dict:
    """Load the model once here, so that a wrong file, config or tokenizer is reported before TorchServe starts;
    returns what the request checks need of it: ``num_labels`` and ``max_positions``. ``say``: how the command
    reports the check (default: the launcher's ``intgrads:`` line on stdout)."""
    from transformers.utils import logging as hf_logging

    from ..engine.models import load_model

    hf_logging.disable_progress_bar()
    started = time.time()
    try:
        bundle = load_model(spec.family, spec.weights, config=spec.config,
                           tokenizer=str(tokenizer_source) if tokenizer_source else None)
    except Exception as error:  # noqa: BLE001
        raise LaunchError(f"cannot load the {spec.key} model from {spec.weights}: {type(error).__name__}: {error}"
                          + ("" if spec.config or spec.family == "hf" else " (if the model is not the family's standard size, pass its "
                             "config.json with --config)"), code=2) from None
    if getattr(bundle, "kind", None) == "causal_lm":
        print(f"intgrads: checked {spec.name}: causal LM {bundle.architecture}, layer {bundle.layer_name} "
              f"({time.time() - started:.1f} s)", flush=True)
        return {"num_labels": 0, "max_positions": bundle.max_positions, "kind": "causal_lm"}
    if isinstance(target, int) and target >= bundle.num_labels:
        raise LaunchError(f"--target {target}: the {spec.key} model has {bundle.num_labels} labels "
                          f"(0..{bundle.num_labels - 1}); give one of them or 'predicted'", code=2)
    text = (f"checked {spec.name}: {bundle.family} ({bundle.layout} layout), {bundle.num_labels} labels, "
            f"layer {bundle.layer_name} ({time.time() - started:.1f} s)")
    if say is None:
        print(f"intgrads: {text}", flush=True)
    else:
        say(text)
    facts = {"num_labels": bundle.num_labels, "max_positions": bundle.max_positions}
    del bundle
    return facts


