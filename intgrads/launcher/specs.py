"""The models a launch serves: the model flags -> :class:`ModelSpec` (family, weights, name, tokenizer,
config), checked before anything is built; the demo model is built here on first use."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .paths import LaunchError

MODEL_KEYS = ("bert", "xlnet-base", "xlnet-large", "hf", "demo", "demo-lm")
FAMILY_OF = {"bert": "bert", "xlnet-base": "xlnet-base", "xlnet-large": "xlnet-large", "hf": "hf", "demo": "hf",
             "demo-lm": "hf"}
FLAG_OF = {"bert": "-bp/--bert-path", "xlnet-base": "-xlb/--xlnet-base-path", "xlnet-large": "-xll/--xlnet-large-path",
           "hf": "--hf-model", "demo": "--demo", "demo-lm": "--demo-lm"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
    """One checked :class:`ModelSpec` per model flag given (the demo is built here on first use)."""
    given = {"bert": args.bert_path, "xlnet-base": args.xlnet_base_path, "xlnet-large": args.xlnet_large_path,
             "hf": args.hf_model}
    keys = ([key for key in MODEL_KEYS[:4] if given[key]] + (["demo"] if args.demo else [])
            + (["demo-lm"] if getattr(args, "demo_lm", False) else []))
    if not keys:
        raise LaunchError("no model given: pass -bp/--bert-path, -xlb/--xlnet-base-path, -xll/--xlnet-large-path, "
                          "--hf-model DIR, --demo or --demo-lm (see --help)", code=2)
    tokenizers = _keyed(args.tokenizer, "--tokenizer", keys)
    configs = _keyed(args.config, "--config", keys)
    names = _keyed(args.model_name, "--model-name", keys)
    specs = []
    for key in keys:
        weights = (ensure_demo(model_store) if key == "demo" else ensure_demo_lm(model_store) if key == "demo-lm"
                   else _weights(key, given[key]))
        name = names.get(key, key)
        if not NAME_PATTERN.match(name):
            raise LaunchError(f"--model-name {name!r}: use letters, digits, '_', '.', '-' (at most 64)")
        config = _config(configs[key]) if key in configs else None
        specs.append(ModelSpec(key=key, family=FAMILY_OF[key], weights=weights.resolve(), name=name,
                               tokenizer=_tokenizer(tokenizers.get(key)), config=config))
    seen = set()
    for spec in specs:
        if spec.name in seen:
            raise LaunchError(f"two models are named {spec.name!r}: give one another --model-name")
        seen.add(spec.name)
    return specs


def _weights(key: str, value: str) -> Path:
    weights = Path(value).expanduser()
    if key == "hf":
        if not (weights / "config.json").is_file():
            raise LaunchError(f"--hf-model {weights}: not a save_pretrained directory (no config.json there)")
    elif not weights.is_file():
        raise LaunchError(f"{FLAG_OF[key]} {weights}: no such file; give the path of the model's state-dict .pth file")
    return weights


def _config(value: str) -> Path:
    config = Path(value).expanduser()
    if config.is_dir():
        config = config / "config.json"
    if not config.is_file():
        raise LaunchError(f"--config {value}: no config.json there")
    return config.resolve()


def _tokenizer(value: str | None) -> str | None:
    """A tokenizer directory (resolved) or a hub name; a path that does not exist is refused."""
    if value is not None and Path(value).expanduser().exists():
        path = Path(value).expanduser()
        if not path.is_dir():
            raise LaunchError(f"--tokenizer {value}: give the tokenizer's directory (save_pretrained), not a file")
        return str(path.resolve())
    if value is not None and (value.startswith((".", "/", "~")) or value.count("/") > 1):
        raise LaunchError(f"--tokenizer {value}: no such directory")
    return value


def ensure_demo(model_store: Path) -> Path:
    try:
        from . import demo
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




def ensure_demo_lm(model_store: Path) -> Path:
    """The demo causal LM (:mod:`intgrads.launcher.demo_lm`), built into the model store on first use."""
    from . import demo_lm

    try:
        return Path(demo_lm.ensure_demo_lm(model_store)).resolve()
    except Exception as error:  # noqa: BLE001
        raise LaunchError(f"could not build the demo causal LM: {type(error).__name__}: {error}") from None
