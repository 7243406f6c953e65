"""intgrads: integrated and intermediate gradients of transformer sequence classifiers.

The engine behind the intgrads TorchServe handler, usable on its own::

    import intgrads
    bundle = intgrads.load_model("bert", "bert.pth", tokenizer="path/to/tokenizer")
    answer = intgrads.attribute(bundle, "a sentence", target=1, n_steps=50)

The public names are imported on first use (module ``__getattr__``), so that ``import intgrads`` and the
launcher's ``--help``/``--stop`` do not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "attribute": "attribution",
    "BASELINES": "baselines",
    "decode_answer": "codec", "encode_answer": "codec", "load_answer": "codec", "summarize_answer": "codec",
    "prepare_answer": "codec", "OUTPUT_NAMES": "codec", "DTYPES": "codec",
    "FAMILIES": "families",
    "ModelBundle": "models", "load_model": "models",
    "METHODS": "quadrature", "step_sizes_and_alphas": "quadrature",
    "reuse_freed_memory": "memory",
}

__all__ = ["attribute", "load_model", "ModelBundle", "encode_answer", "decode_answer", "load_answer",
           "summarize_answer", "prepare_answer", "step_sizes_and_alphas", "BASELINES", "METHODS", "FAMILIES",
           "OUTPUT_NAMES", "DTYPES", "reuse_freed_memory"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'intgrads' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value   # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
