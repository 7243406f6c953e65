"""A causal LM request's checks before any work (its length, its answer's size, its work) and the model's
description.

Work: one forward pass over the L positions at each of the S points, and one backward pass per target token
(about twice a forward each), so with the classifier's count W(L, S) (:func:`intgrads.engine.budget.request_work`)

    work = W(L, S) * (1 + 2 T) / 3          (T target tokens; max_new_tokens when generating)
"""

from __future__ import annotations

from ..answer.keys import LM_FULL_NAMES, LM_SENDABLE_NAMES, estimate_lm_answer_bytes
from ..engine.budget import G, request_work
from ..engine.causal import INTERPOLATIONS, LM_BASELINES, MAX_NEW_TOKENS, SCORES
from ..engine.precision import PRECISIONS
from ..engine.quadrature import METHODS
from .guards import SMALLER, counted_steps
from .lm_request import lm_lengths
from .values import RequestError


def lm_work(request, layers: int, hidden: int) -> float:
    """G MACs of a causal LM request (see the module docstring)."""
    length, targets = request.lengths
    steps = counted_steps(request.options)[0]
    return request_work([length], steps, layers, hidden) * (1 + 2 * targets) / 3 / G


def check_lm_request(request, bundle, hidden, layers, limits, budget_gmac, response_timeout, max_tokens) -> None:
    """400 for a prompt the tokenizer cannot read (or messages without a chat template), 413 for one over
    ``max_tokens``, an answer over the server's response size, or work over its budget."""
    length, targets = request.lengths = lm_lengths(bundle, request)
    if length + 1 > max_tokens:
        raise RequestError(f"prompt and target are {length + 1} tokens; this server takes at most {max_tokens} "
                           "(--max-tokens or the model's positions): send a shorter prompt, target or "
                           "max_new_tokens", status=413)
    steps, said = counted_steps(request.options)
    encoding = request.encoding or {}
    if not request.want_json:
        dtype = encoding.get("dtype") or "float32"
        size = estimate_lm_answer_bytes(length, targets, hidden, steps, dtype=dtype, outputs=encoding.get("outputs"))
        limit = int(limits["max_response_bytes"])
        if size > limit * 0.95:
            raise RequestError(f"the answer would hold about {size / 1e6:.0f} MB ({targets} target tokens x {length} "
                               f"positions x {said}, {dtype}), more than this server sends ({limit / 1e6:.0f} MB): "
                               f"{SMALLER}, fewer target tokens, \"dtype\": \"float16\", or outputs without "
                               f"{' / '.join(LM_FULL_NAMES)}", status=413)
    if budget_gmac:
        work = lm_work(request, layers, hidden)
        if work > budget_gmac:
            raise RequestError(f"this request is about {work:,.0f} G multiply-accumulates ({length} positions x "
                               f"{said} x {targets} target tokens on a {layers}-layer, {hidden}-wide model), more "
                               f"than the {budget_gmac:,.0f} G this server takes on per request (--max-work; about "
                               f"half of its {response_timeout:.0f} s response timeout): {SMALLER} or fewer target "
                               "tokens", status=413, work_gmac=round(work, 1), max_work_gmac=round(budget_gmac, 1))


def describe_lm(service) -> dict:
    """``GET /models/NAME`` of a causal LM."""
    from .lm_request import LM_DEFAULTS

    bundle = service.bundle
    defaults = {**service.defaults, **LM_DEFAULTS}
    return {"kind": "causal_lm", "architecture": bundle.architecture, "family": bundle.family,
            "layout": bundle.layout, "layer": bundle.layer_name, "activation": bundle.activation,
            "device": str(bundle.device), "layers": service.layers, "hidden": service.hidden,
            "vocab_size": int(bundle.model.get_input_embeddings().weight.shape[0]),
            "chat_template": bool(getattr(bundle.tokenizer, "chat_template", None)),
            "max_positions": bundle.max_positions, "defaults": defaults,
            "limits": {**{k: v for k, v in service.limits.items() if k != "max_work"},
                       "max_work_gmac": service.work_budget, "response_timeout_s": service.response_timeout,
                       "max_new_tokens": MAX_NEW_TOKENS},
            "outputs": list(LM_SENDABLE_NAMES), "methods": list(METHODS), "baselines": list(LM_BASELINES),
            "scores": list(SCORES), "interpolations": list(INTERPOLATIONS), "precisions": list(PRECISIONS)}
