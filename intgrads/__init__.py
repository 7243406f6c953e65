"""intgrads: integrated and intermediate gradients of transformer sequence classifiers.

The engine behind the intgrads servers, usable on its own::

    import intgrads
    bundle = intgrads.demo_model()          # or intgrads.load_model("bert", "bert.pth", tokenizer="path/to/tokenizer")
    answer = intgrads.attribute(bundle, "a sentence", target=1, n_steps=50)
    answer                                  # Answer(9 tokens, predicted 1 'positive' (p=0.91), ...): one line
    intgrads.show(answer)                   # the picture, inline in a notebook

The package's rooms (docs/architecture.md), with arrows pointing toward the engine only:

- ``intgrads.engine``: quadrature, baselines, model families, weights, loading, the attribution (torch and
  transformers only);
- ``intgrads.answer``: the answer's keys and dtypes, its gzip wire format and JSON summary;
- ``intgrads.serving``: an HTTP request -> engine options (the TorchServe handler in ``handler/`` is glue);
- ``intgrads.launcher``: the ``intgrads`` command (CLI, archives, TorchServe config and processes);
- ``intgrads.client`` and ``intgrads.pictures``: the batch client and the attribution pictures;
- ``intgrads.system``: cores, processes and Java, for whoever needs them.

The public names below are imported on first use (module ``__getattr__``): ``import intgrads`` loads none of
the rooms, and the engine's names load only the engine and the answer format (``demo_model`` the launcher's
demo builder, ``show`` and ``render_answer`` the pictures).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "attribute": "answer.view", "attribute_lm": "answer.view", "Answer": "answer.view", "load_answer": "answer.view",
    "demo_model": "launcher.demo",
    "render_answer": "pictures", "show": "pictures",
    "BASELINES": "engine.baselines",
    "FAMILIES": "engine.families",
    "ModelBundle": "engine.models", "load_model": "engine.models",
    "METHODS": "engine.quadrature", "step_sizes_and_alphas": "engine.quadrature",
    "reuse_freed_memory": "engine.memory",
    "PRECISIONS": "engine.precision",
    "decode_answer": "answer.codec", "encode_answer": "answer.codec",
    "prepare_answer": "answer.codec", "DTYPES": "answer.codec",
    "summarize_answer": "answer.summary",
    "OUTPUT_NAMES": "answer.keys",
}

__all__ = ["attribute", "attribute_lm", "load_model", "ModelBundle", "Answer", "demo_model", "show", "render_answer",
           "encode_answer", "decode_answer", "load_answer",
           "summarize_answer", "prepare_answer", "step_sizes_and_alphas", "BASELINES", "METHODS", "FAMILIES",
           "OUTPUT_NAMES", "DTYPES", "PRECISIONS", "reuse_freed_memory"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'intgrads' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value   # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
