"""Answers sent compact: x and b instead of the intermediates, rebuilt by the client into the usual answer.

The intermediates are N copies of the layer's shape, z_k = b + a_k (x - b), as many bytes as the intermediate
gradients. A client that asks for ``outputs = COMPACT_OUTPUTS`` (every output but ``intermediates``, plus the
path's ends ``layer_input`` = x and ``layer_baseline`` = b) gets about half the bytes, and
:func:`rebuild_intermediates` turns that answer back into the one the server would have sent whole: the same
keys in the same order, the intermediates computed by the engine's own :func:`~intgrads.engine.attribution.
interpolate` at the answer's own ``alphas`` (``n_steps="auto"`` chose them; a fixed rule's are those of its
``method`` and ``n_steps``, which an answer without ``alphas`` or with float16 ones falls back to), so bitwise the
server's for a float32 answer, x and b dropped.
"""

from __future__ import annotations

import torch

from ..engine.attribution import interpolate
from ..engine.quadrature import METHODS, step_sizes_and_alphas
from .keys import ENDPOINT_NAMES


def is_compact(answer) -> bool:
    """True for an answer (or list of them) that carries x and b instead of the intermediates."""
    first = answer[0] if isinstance(answer, list) and answer else answer
    return isinstance(first, dict) and all(name in first for name in ENDPOINT_NAMES) and "intermediates" not in first


def rebuild_intermediates(answer):
    """The whole answer (or list) from a compact one: ``intermediates`` rebuilt after ``step_sizes``, x and b
    dropped. Raises ValueError for an answer that is not compact."""
    if isinstance(answer, list):
        return [rebuild_intermediates(item) for item in answer]
    if not is_compact(answer):
        raise ValueError("not a compact answer: it needs layer_input and layer_baseline and no intermediates")
    x, b = answer["layer_input"][0], answer["layer_baseline"][0]
    intermediates = interpolate(x.float(), b.float(), path_alphas(answer)).to(x.dtype)
    out = {}
    for key, value in answer.items():
        if key in ENDPOINT_NAMES:
            continue
        out[key] = value
        if key == "step_sizes":
            out["intermediates"] = intermediates
    out.setdefault("intermediates", intermediates)
    return out


def path_alphas(answer) -> list[float]:
    """The answer's path positions a_k, in its rows' order: its ``alphas`` when they are float32 (an answer of
    n_steps "auto" has no other source), else those of its fixed rule (the exact ones, not float16's)."""
    alphas = answer.get("alphas")
    if alphas is not None and (alphas.dtype == torch.float32 or answer.get("method") not in METHODS):
        return alphas.float().tolist()
    if answer.get("method") not in METHODS:
        raise ValueError(f"the answer's points are not a fixed rule's (method {answer.get('method')!r}) and it carries "
                         "no alphas: ask for them with the other outputs")
    return step_sizes_and_alphas(answer["method"], answer["n_steps"])[1]
