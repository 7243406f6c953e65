"""An answer from elsewhere, checked before anyone keeps it: bounded decompression, a whole gzip, and keys,
dtypes and shapes that agree with each other and with ``n_steps`` and ``method``.

A client cannot trust the bytes a server sends (a broken, old or compromised server; a body cut short). Before
an answer is written or rebuilt it goes through :func:`decode_checked`:

- **Bounded decompression.** A gzip answer inflates to at most ``MAX_INFLATION`` times its own size (plus
  ``INFLATION_SLACK``): float gradients barely compress (about 1.1x at level 1), so this bounds memory by the
  answer's own size and stops a gzip bomb after a few MB.
- **A whole gzip.** The deflate stream must end, with its CRC-32 and length right and nothing after it: a body
  cut short, even inside a properly ended HTTP response, is refused.
- **A consistent answer** (:func:`check_answer`). With T the tokens, H the width and N = ``n_steps``::

      integrated_gradients (1, T, H)   intermediate_gradients (N, T, H)   intermediates (N, T, H)
      layer_input, layer_baseline, idgi (1, T, H)   step_sizes (N, 1)   alphas, step_outputs (N,)
      token_attributions, idgi_token_attributions (T,)
      input_ids (1, T) int64   tokens: T strings   logits (1, C)

  every tensor that is there has its shape, a float dtype (int64 for the ids) and finite values where the
  engine refuses others; ``method`` is a known rule and, for N <= ``RULE_CHECK_STEPS``, the step sizes (and
  alphas) are that rule's own. A compact answer (x and b instead of the intermediates) must carry what the
  rebuild needs and, without ``alphas``, at most ``MAX_REBUILD_STEPS`` steps: the Gauss-Legendre rule of n
  points costs O(n^2) memory and O(n^3) time to build.

No torch: the answer is read by :mod:`intgrads.answer.reader` (its tensors as NumPy views of the inflated
bytes) and checked with NumPy; :func:`check_answer` takes torch tensors too (as NumPy views). Step sizes and
Gauss-Legendre points are compared bit for bit; a Riemann rule's alphas (``torch.linspace`` in float32 on the
server, whose rounding NumPy does not reproduce) must be the exact points moved by at most ``ALPHA_ULPS``
float32 units in the last place, then rounded to the answer's dtype: a thousandth of the distance between two
rules' points at 1024 steps.
"""

from __future__ import annotations

import math

import numpy as np

from ..engine.quadrature import METHODS, min_steps
from .keys import ENDPOINT_NAMES
from .reader import TORCH_DTYPE_NAMES, ReadRefused, ReadUnsupported, read_saved

try:
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is a declared dependency
    import zlib as _zlib

MAX_INFLATION = 8                  # decompressed bytes per gzip byte an answer may reach
INFLATION_SLACK = 1 << 20          # ... plus this much, for small answers
RULE_CHECK_STEPS = 1024            # up to here the step sizes are checked against the rule (leggauss(1024): 0.2 s)
MAX_REBUILD_STEPS = RULE_CHECK_STEPS
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
INT64 = (np.dtype(np.int64),)
ALPHA_ULPS = 4                     # a Riemann rule's alphas: torch.linspace's float32 rounding
GZIP_WBITS = 31                    # zlib's window bits for a gzip container


class AnswerInvalid(ValueError):
    """The bytes are not a whole, consistent intgrads answer; the message says what is wrong."""


def decompress_bounded(payload: bytes, limit: int | None = None) -> bytes:
    """The one gzip member in ``payload``, decompressed to at most ``limit`` bytes (default: MAX_INFLATION x its
    size + INFLATION_SLACK); raises :class:`AnswerInvalid` for more, for a stream cut short or with a bad
    CRC-32, and for bytes after it. One call inflates into one buffer capped at ``limit`` + 1 bytes (zlib's
    ``max_length``), so memory stays within the limit while refusing a bomb, and the output is never copied."""
    if limit is None:
        limit = MAX_INFLATION * len(payload) + INFLATION_SLACK
    if payload[:2] != b"\x1f\x8b":
        raise AnswerInvalid("not a gzip answer")
    inflater = _zlib.decompressobj(GZIP_WBITS)
    try:
        raw = inflater.decompress(payload, limit + 1)
    except _zlib.error as error:
        raise AnswerInvalid(f"the gzip answer is damaged ({error})") from None
    if len(raw) > limit:
        raise AnswerInvalid(f"the gzip answer of {len(payload):,} bytes inflates past {limit:,} bytes: not an "
                            "answer (a gzip bomb?)")
    if not inflater.eof:
        raise AnswerInvalid(f"the gzip answer is cut short after {len(payload):,} bytes (its stream does not end)")
    if inflater.unused_data:   # (input left unread would mean the output reached limit + 1: refused above)
        raise AnswerInvalid("bytes follow the gzip answer")
    return raw


def decode_checked(payload: bytes, *, compact: bool = False, limit: int | None = None):
    """The answer dict in ``payload`` (gzip ``torch.save`` bytes), decompressed with a bound, read with the
    allow-list reader (its tensors NumPy arrays) and checked (:func:`check_answer`); raises
    :class:`AnswerInvalid`."""
    return load_checked(decompress_bounded(payload, limit), compact=compact)


def load_checked(raw, *, compact: bool = False):
    """The answer dict in ``raw`` (``torch.save`` bytes), read and checked; raises :class:`AnswerInvalid`."""
    try:
        answer = read_saved(raw)
    except ReadUnsupported:   # a layout left to torch (zip64: over 4 GiB)
        answer = _torch_load(raw)
    except ReadRefused as error:
        raise AnswerInvalid(f"the answer does not load: {error}") from None
    check_answer(answer, compact=compact)
    return answer


def _torch_load(raw):
    import io

    import torch

    try:
        loaded = torch.load(io.BytesIO(raw), weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever torch.load says of bad bytes
        raise AnswerInvalid(f"the answer does not load: {type(error).__name__}: {str(error)[:200]}") from None
    return as_arrays(loaded)


def as_arrays(answer):
    """``answer`` with its torch tensors as NumPy views (a shallow copy; NumPy arrays and the rest as they are)."""
    if isinstance(answer, list):
        return [as_arrays(item) for item in answer]
    if not isinstance(answer, dict):
        return answer
    return {key: _array_of(value) for key, value in answer.items()}


def _array_of(value):
    if isinstance(value, np.ndarray) or not (hasattr(value, "detach") and hasattr(value, "numpy")):
        return value
    try:
        return value.detach().cpu().numpy()
    except (TypeError, RuntimeError):   # a dtype NumPy has not (bfloat16): left as it is, refused by the checks
        return value


def to_torch(answer):
    """A checked answer's NumPy arrays as torch tensors (imports torch; for the rebuild of a compact answer)."""
    import warnings

    import torch

    if isinstance(answer, list):
        return [to_torch(item) for item in answer]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # read-only views: torch only reads them
        return {key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
                for key, value in answer.items()}


def _tensor(answer, name, shape, dtypes=FLOAT_DTYPES):
    """The tensor ``name`` if present, checked against ``shape`` (None entries: any size)."""
    value = answer.get(name)
    if value is None:
        return None
    if not isinstance(value, np.ndarray) or value.dtype not in dtypes:
        raise AnswerInvalid(f"{name} is not a tensor of {', '.join(TORCH_DTYPE_NAMES[d] for d in dtypes)}")
    if value.ndim != len(shape) or any(want is not None and got != want for got, want in zip(value.shape, shape)):
        raise AnswerInvalid(f"{name} has shape {tuple(value.shape)}, not {tuple('?' if s is None else s for s in shape)}")
    return value


def _int(answer, name) -> int:
    value = answer.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise AnswerInvalid(f"{name} is {type(value).__name__}, not an integer")
    return value


def check_answer(answer, *, compact: bool = False) -> None:
    """Raise :class:`AnswerInvalid` unless ``answer`` is one consistent answer dict (see the module docstring);
    ``compact``: it must also hold what :func:`intgrads.answer.rebuild.rebuild_intermediates` needs."""
    if not isinstance(answer, dict):
        raise AnswerInvalid(f"the answer is {type(answer).__name__}, not a dict")
    answer = as_arrays(answer)
    if answer.get("kind") == "causal_lm":
        return check_lm_answer(answer)
    logits = _tensor(answer, "logits", (1, None))
    if logits is None or logits.shape[1] < 1 or not np.isfinite(logits).all():
        raise AnswerInvalid("the answer has no finite logits")
    tokens = answer.get("tokens")
    if tokens is not None and not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        raise AnswerInvalid("tokens is not a list of strings")
    ids = _tensor(answer, "input_ids", (1, None), dtypes=INT64)
    width = len(tokens) if tokens is not None else (ids.shape[1] if ids is not None else None)
    _tensor(answer, "input_ids", (1, width), dtypes=INT64)
    _tensor(answer, "token_attributions", (width,))
    steps = _int(answer, "n_steps")
    method = answer.get("method")
    alphas = _tensor(answer, "alphas", (steps,))
    if alphas is None and method not in METHODS:
        raise AnswerInvalid(f"method {str(method)[:40]!r} is not one of {', '.join(METHODS)}")
    if steps < (min_steps(method) if method in METHODS else 1):
        raise AnswerInvalid(f"n_steps {steps} is too few for method {method}")
    hidden = _shape_of(answer, width, steps)
    _tensor(answer, "step_sizes", (steps, 1))
    _tensor(answer, "step_outputs", (steps,))
    _tensor(answer, "idgi_token_attributions", (width,))
    _check_rule(answer, method, steps, alphas)
    _check_numbers(answer)
    if compact:
        missing = [name for name in ("step_sizes", *ENDPOINT_NAMES) if name not in answer]
        if missing or hidden is None:
            raise AnswerInvalid(f"the compact answer lacks {', '.join(missing) or 'its tensors'}")
        if alphas is None and steps > MAX_REBUILD_STEPS:
            raise AnswerInvalid(f"the compact answer has {steps} steps and no alphas: more than the "
                                f"{MAX_REBUILD_STEPS} a client rebuilds (ask for whole answers: --rebuild never)")


def _shape_of(answer, width, steps):
    """The width H shared by the (., T, H) tensors, checking T and N on the way; None when there are none."""
    hidden = None
    for name, rows in (("integrated_gradients", 1), ("intermediate_gradients", steps), ("intermediates", steps),
                       ("layer_input", 1), ("layer_baseline", 1), ("idgi", 1)):
        value = _tensor(answer, name, (rows, width, hidden))
        if value is not None:
            hidden = value.shape[2]
            width = value.shape[1]
    return hidden


def _check_rule(answer, method, steps, alphas):
    """The step sizes (and alphas) are the named rule's, where that rule is cheap to build."""
    sizes = answer.get("step_sizes")
    if method not in METHODS or steps > RULE_CHECK_STEPS or (sizes is None and alphas is None):
        return
    rule_sizes, rule_alphas = rule_of(method, steps)
    for name, given, rule in (("step_sizes", sizes, rule_sizes), ("alphas", alphas, rule_alphas)):
        if given is None:
            continue
        if not (_same(given, rule) or (name == "alphas" and method != "gausslegendre" and _near(given, rule))):
            raise AnswerInvalid(f"{name} are not those of {method} with {steps} steps")


def rule_of(method: str, steps: int):
    """The rule's step sizes and alphas, as the engine's ``step_sizes_and_alphas`` gives them, in NumPy: exact for
    Gauss-Legendre and every rule's step sizes; a Riemann rule's alphas (``torch.linspace`` in float32 there)
    exact, in float64."""
    n = steps
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * weights, 0.5 * (1 + nodes)
    sizes = np.full(n, 1 / n)
    if method == "riemann_trapezoid":
        sizes[0] /= 2
        sizes[-1] /= 2
        ends = (0, 1)
    elif method == "riemann_left":
        ends = (0, 1 - 1 / n)
    elif method == "riemann_middle":
        ends = (1 / (2 * n), 1 - 1 / (2 * n))
    else:  # riemann_right
        ends = (1 / n, 1)
    return sizes, np.linspace(*ends, n)


def _near(given, exact) -> bool:
    """Every point between the exact one moved ALPHA_ULPS float32 units in the last place down and up, each end
    rounded to float32 and then to ``given``'s dtype (rounding keeps the order)."""
    exact = np.asarray(exact, dtype=np.float64).reshape(given.shape)
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    low, high = ((exact + sign * ALPHA_ULPS * ulp).astype(np.float32).astype(given.dtype).astype(np.float64)
                 for sign in (-1, 1))
    value = given.astype(np.float64)
    return bool(np.all((low <= value) & (value <= high)))


def _same(given, rule) -> bool:
    """``given`` equals the rule's numbers rounded to float32, then to its own dtype, bit for bit."""
    expected = np.asarray(rule, dtype=np.float64).astype(np.float32).astype(given.dtype).reshape(given.shape)
    return bool(np.array_equal(given, expected))


def _check_numbers(answer):
    for name in ("convergence_delta",):
        value = answer.get(name)
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise AnswerInvalid(f"{name} is not a number")
    target = answer.get("target")
    classes = answer["logits"].shape[1]
    if target is not None and not (isinstance(target, int) and not isinstance(target, bool) and 0 <= target < classes):
        raise AnswerInvalid(f"target {str(target)[:20]} is not a class of the {classes} logits")
    delta = answer.get("convergence_delta")
    if isinstance(delta, float) and math.isnan(delta) and not answer.get("warnings"):
        raise AnswerInvalid("convergence_delta is NaN without a warning")


def check_lm_answer(answer) -> None:
    """A causal LM answer (T target tokens, S points, L input positions, H hidden)::

        token_attributions, idgi_token_attributions (T, L)   step_token_attributions (T, S, L)
        scores, baseline_scores, convergence_delta (T,)      step_outputs (T, S)   alphas (S,)   step_sizes (S, 1)
        integrated_gradients (T, L, H)   intermediate_gradients (T, S, L, H)   intermediates (S, L, H)
        input_ids (1, L) and target_ids (T,) int64, tokens L strings, target_tokens T strings

    with finite scores, 0 < prompt_length <= L + 1, and one list of warnings per target token."""
    tokens, targets = answer.get("tokens"), answer.get("target_tokens")
    for name, value in (("tokens", tokens), ("target_tokens", targets)):
        if value is not None and not (isinstance(value, list) and all(isinstance(t, str) for t in value)):
            raise AnswerInvalid(f"{name} is not a list of strings")
    target_ids = _tensor(answer, "target_ids", (None,), dtypes=INT64)
    scores = _tensor(answer, "scores", (None,))
    count = next((len(v) for v in (target_ids, targets, scores) if v is not None), None)
    if count is None or count < 1:
        raise AnswerInvalid("the causal LM answer names no target token (target_ids, target_tokens or scores)")
    ids = _tensor(answer, "input_ids", (1, None), dtypes=INT64)
    width = len(tokens) if tokens is not None else (ids.shape[1] if ids is not None else None)
    steps = _int(answer, "n_steps")
    if steps < 1:
        raise AnswerInvalid(f"n_steps {steps} is too few")
    _tensor(answer, "input_ids", (1, width), dtypes=INT64)
    _tensor(answer, "target_ids", (count,), dtypes=INT64)
    for name, shape in (("scores", (count,)), ("baseline_scores", (count,)),
                        ("convergence_delta", (count,)), ("token_attributions", (count, width)),
                        ("idgi_token_attributions", (count, width)), ("step_token_attributions", (count, steps, width)),
                        ("step_outputs", (count, steps)), ("alphas", (steps,)), ("step_sizes", (steps, 1))):
        _tensor(answer, name, shape)
    hidden = None
    for name, shape in (("integrated_gradients", (count, width)), ("intermediate_gradients", (count, steps, width)),
                        ("intermediates", (steps, width))):
        value = _tensor(answer, name, shape + (hidden,))
        if value is not None:
            hidden = value.shape[-1]
    if scores is not None and not np.isfinite(scores).all():
        raise AnswerInvalid("the causal LM answer has non-finite scores")
    prompt = answer.get("prompt_length")
    if prompt is not None and width is not None and not (
            isinstance(prompt, int) and not isinstance(prompt, bool) and 0 < prompt <= width + 1):
        raise AnswerInvalid(f"prompt_length {str(prompt)[:20]} does not fit {width} input positions")
    warnings = answer.get("warnings")
    if warnings is not None and not (isinstance(warnings, list) and len(warnings) == count
                                     and all(isinstance(w, list) for w in warnings)):
        raise AnswerInvalid("warnings is not one list per target token")
