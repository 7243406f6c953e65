"""What a server checks before it takes on a request, and how it says no: the answer's size, the work's size
(:mod:`intgrads.engine.budget`) and a request that ran out of time. Each refusal is a :class:`RequestError`
whose message says what to ask for instead."""

from __future__ import annotations

from ..answer.keys import estimate_answer_bytes
from ..engine.adaptive import AUTO, most_points
from ..engine.budget import G, DeadlineExceeded, default_budget, model_shape, request_work
from .request import RequestError

SMALLER = "ask for fewer n_steps, shorter text or fewer sequences"


def counted_steps(options: dict) -> tuple[int, str]:
    """The steps a request is counted at, and what to say about them: n_steps, or for n_steps "auto" the most
    points its cap allows (it may need fewer; the checks come before any work)."""
    if options["n_steps"] == AUTO:
        steps = most_points(options["max_steps"])
        return steps, f"{steps} steps (n_steps auto, counted at its cap max_steps = {options['max_steps']})"
    return options["n_steps"], f"{options['n_steps']} steps"


def sentence_lengths(bundle, sequences, max_tokens: int) -> list[int]:
    """Each sentence's token count as the engine will run it (special tokens in, truncated to ``max_tokens``)."""
    ids = bundle.tokenizer(list(sequences), add_special_tokens=True)["input_ids"]
    return [min(len(item), max_tokens) for item in ids]


def _or_cap(options: dict) -> str:
    return " or a lower max_steps" if options["n_steps"] == AUTO else ""


def check_answer_size(request, lengths, hidden: int, limit: int):
    """413 when the answer (for its dtype and outputs) would pass ``limit`` bytes (max_response_size)."""
    encoding = request.encoding or {}
    dtype, outputs = encoding.get("dtype") or "float32", encoding.get("outputs")
    steps, said = counted_steps(request.options)
    total = sum(estimate_answer_bytes(length, hidden, steps, dtype=dtype, outputs=outputs) for length in lengths)
    if total > limit * 0.95:
        raise RequestError(
            f"the answer would hold about {total / 1e6:.0f} MB ({sum(lengths)} tokens x {hidden} x "
            f"{said}, {dtype}), more than this server sends ({limit / 1e6:.0f} MB, max_response_size): "
            f"{SMALLER}{_or_cap(request.options)}, \"dtype\": \"float16\", \"outputs\" without intermediates, or "
            "use Accept: application/json for the summary", status=413)


def work_budget(max_work, response_timeout: float, device: str, threads: int) -> float | None:
    """The G MACs one request may ask for: ``max_work`` as set (--max-work; 0: no limit), else the default of
    :func:`intgrads.engine.budget.default_budget`."""
    if max_work is None:
        return default_budget(response_timeout, device=device, threads=threads) / G
    return float(max_work) or None


def check_work(request, lengths, model, budget_gmac: float | None, response_timeout: float):
    """413 before any work when the request needs more than ``budget_gmac`` G multiply-accumulates."""
    if not budget_gmac:
        return
    layers, hidden = model_shape(model)
    steps, said = counted_steps(request.options)
    work = request_work(lengths, steps, layers, hidden) / G
    if work > budget_gmac:
        tokens = max(lengths)
        fits = max(0, int(steps * budget_gmac / work))
        raise RequestError(
            f"this request is about {work:,.0f} G multiply-accumulates ({len(lengths)} sentence(s) x {tokens} "
            f"tokens x {said} on a {layers}-layer, {hidden}-wide model), more than the {budget_gmac:,.0f} G "
            f"this server takes on per request (--max-work; about half of its {response_timeout:.0f} s response "
            f"timeout): {SMALLER}{_or_cap(request.options)} (at most ~{fits} steps for this text), or split the "
            "sentences over several requests", status=413, work_gmac=round(work, 1),
            max_work_gmac=round(budget_gmac, 1))


def deadline_error(error: DeadlineExceeded, response_timeout: float) -> RequestError:
    """504 for a request the engine stopped at its deadline; the worker is free for the next one."""
    return RequestError(
        f"the request ran out of time: it was stopped after {error.done_rows} of "
        f"{'at most ' if getattr(error, 'at_most', False) else ''}{error.total_rows} interpolation "
        f"rows, near the end of the server's {response_timeout:.0f} s response timeout; {SMALLER}, or split it "
        "(retrying the same request would run out of time again)", status=504)
