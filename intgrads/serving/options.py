"""A request's engine options and encoding choices, checked: types, ranges and the values a model allows, each
refusal a 400 (or 413 past a server's limit) naming the allowed values. The engine checks its options again
(``intgrads.engine.options``); these are the server's messages, sent before any work."""

from __future__ import annotations

import json

from ..answer.keys import DTYPE_NAMES, SENDABLE_NAMES, named_outputs
from ..engine.adaptive import AUTO, DEFAULT_MAX_STEPS, DEFAULT_TOLERANCE, MIN_MAX_STEPS
from ..engine.baselines import BASELINES
from ..engine.precision import PRECISIONS
from ..engine.quadrature import METHODS, min_steps
from .values import RequestError, is_int, jsonable, show


def check_options(options: dict, *, num_labels: int, limits: dict) -> None:
    """Types and ranges of the options; raise :class:`RequestError` naming the first bad one."""
    target = options["target"]
    if not (target == "predicted" or (is_int(target) and 0 <= target < num_labels)):
        raise RequestError(f"target must be an integer from 0 to {num_labels - 1} or \"predicted\"; "
                           f"got {json.dumps(target) if jsonable(target) else repr(target)}")
    method = options["method"]
    if not isinstance(method, str) or method not in METHODS:
        raise RequestError(f"method must be one of {', '.join(METHODS)}; got {show(method)}")
    n_steps = options["n_steps"]
    low, high = min_steps(method), limits["max_steps"]
    if n_steps == AUTO:
        check_auto(options, high)
    elif "tolerance" in options or "max_steps" in options:
        raise RequestError("tolerance and max_steps go with \"n_steps\": \"auto\" (the engine then chooses the "
                           f"steps); with n_steps {show(n_steps)} leave them out")
    elif not is_int(n_steps):
        raise RequestError(f"n_steps must be an integer from {low} to {high}, or \"{AUTO}\"; got {show(n_steps)}")
    elif n_steps > high:
        raise RequestError(f"n_steps is {n_steps}; this server takes at most {high} "
                           f"(ask for fewer steps, or start the server with a higher --max-steps)", status=413)
    elif n_steps < low:
        raise RequestError(f"n_steps must be an integer from {low} to {high} for method {method}; got {n_steps}")
    baseline = options["baseline"]
    if not isinstance(baseline, str) or baseline not in BASELINES:
        raise RequestError(f"baseline must be one of {', '.join(BASELINES)}; got {show(baseline)}")
    if not isinstance(options["keep_special_tokens"], bool):
        raise RequestError(f"keep_special_tokens must be true or false; got {show(options['keep_special_tokens'])}")
    size = options["internal_batch_size"]
    if size is not None and not (is_int(size) and size >= 1):
        raise RequestError(f"internal_batch_size must be a positive integer or null; got {show(size)}")
    precision = options["precision"]
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise RequestError(f"precision must be one of {', '.join(PRECISIONS)} (the arithmetic of the model's passes; "
                           f"the answer's dtype is the separate \"dtype\"); got {show(precision)}")


def check_auto(options: dict, high: int) -> None:
    """n_steps "auto": ``tolerance`` (default 0.01) in (0, 1) and ``max_steps`` (default 128, or the server's
    --max-steps when lower) from 9 to ``high``; the defaults are filled in."""
    tolerance = options.setdefault("tolerance", DEFAULT_TOLERANCE)
    if not (isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and 0 < tolerance < 1):
        raise RequestError(f"tolerance must be a number between 0 and 1, e.g. {DEFAULT_TOLERANCE}: the relative error "
                           f"n_steps \"auto\" aims for; got {show(tolerance)}")
    if high < MIN_MAX_STEPS:
        raise RequestError(f"n_steps \"auto\" starts with {MIN_MAX_STEPS} points and this server takes at most {high} "
                           "(--max-steps): ask for a number of steps", status=413)
    max_steps = options.setdefault("max_steps", min(DEFAULT_MAX_STEPS, high))
    if not (is_int(max_steps) and max_steps >= MIN_MAX_STEPS):
        raise RequestError(f"max_steps must be an integer from {MIN_MAX_STEPS} to {high} (the most points n_steps "
                           f"\"auto\" may use); got {show(max_steps)}")
    if max_steps > high:
        raise RequestError(f"max_steps is {max_steps}; this server takes at most {high} (--max-steps)", status=413)


def check_encoding(fields: dict, sendable=None, kind: str = "", note: str = "(the settings keys are always sent)",
                   arrange=None) -> dict:
    """The request's ``dtype`` (default float32) and ``outputs`` (default None: every key), checked: ``outputs``
    names keys of ``sendable`` (a classifier's answer by default; ``kind`` and ``note`` say whose in the messages),
    put in the order ``arrange`` gives (the answer's own order by default)."""
    sendable = SENDABLE_NAMES if sendable is None else sendable
    names = ", ".join(sendable)
    dtype = fields.get("dtype", "float32")
    if not isinstance(dtype, str) or dtype not in DTYPE_NAMES:
        raise RequestError(f"dtype must be one of {', '.join(DTYPE_NAMES)}; got {show(dtype)}")
    outputs = fields.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(name, str) for name in outputs):
            raise RequestError(f"outputs must be a list of answer keys{kind} from {names}; got {show(outputs)}")
        if not outputs:
            raise RequestError(f"outputs is an empty list: name at least one of {names}")
        unknown = [name for name in outputs if name not in sendable]
        if unknown:
            shown = ", ".join(show(name) for name in unknown[:5])
            raise RequestError(f"unknown output(s) {shown}{kind}; outputs may name {names} {note}")
        outputs = (arrange or named_outputs)(outputs)
    return {"dtype": dtype, "outputs": outputs}
