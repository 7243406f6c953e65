"""Validation of attribution options; every error names the option and what it accepts."""

from __future__ import annotations

from dataclasses import dataclass

from .adaptive import AUTO, DEFAULT_MAX_STEPS, DEFAULT_TOLERANCE, MIN_MAX_STEPS
from .baselines import BASELINES
from .precision import DEFAULT_PRECISION, check_precision
from .quadrature import METHODS, min_steps

MAX_STEPS = 1000
# Padded tokens per forward/backward chunk when no internal_batch_size is given: 3200 = 64 tokens x 50 steps in
# one pass. A 512-token bert-base-shape request (6 interpolation rows a chunk) then peaks at ~2.9 GB RSS on CPU,
# against > 10 GB with every step at once (docs/benchmarks.md, part 4). chunk_tokens=None runs every step at once.
DEFAULT_CHUNK_TOKENS = 3200


@dataclass(frozen=True)
class Options:
    target: int | str
    n_steps: int | str          # an integer, or "auto" (see intgrads.engine.adaptive)
    method: str
    baseline: str
    keep_special_tokens: bool
    internal_batch_size: int | None
    max_tokens: int
    precision: str = DEFAULT_PRECISION
    tolerance: float = DEFAULT_TOLERANCE    # n_steps "auto" only
    max_steps: int = DEFAULT_MAX_STEPS      # n_steps "auto" only


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_options(*, target, n_steps, method, baseline, keep_special_tokens, internal_batch_size,
                  max_tokens, num_labels: int, min_tokens: int = 1, max_positions: int | None = None,
                  precision: str = DEFAULT_PRECISION, tolerance=None, max_steps=None) -> Options:
    """Return the options as an :class:`Options`, or raise ``ValueError`` naming the bad one. ``tolerance`` and
    ``max_steps`` go with ``n_steps="auto"`` only (None: their defaults), as a server refuses them otherwise."""
    if not (target == "predicted" or (_is_int(target) and 0 <= target < num_labels)):
        raise ValueError(
            f"target must be an integer from 0 to {num_labels - 1} or \"predicted\"; got {target!r}")
    check_steps(method, n_steps)
    tolerance, max_steps = auto_settings(n_steps, tolerance, max_steps)
    check_choice("baseline", baseline, BASELINES)
    check_flag("keep_special_tokens", keep_special_tokens)
    if internal_batch_size is not None and not (_is_int(internal_batch_size) and internal_batch_size >= 1):
        raise ValueError(f"internal_batch_size must be a positive integer or null; got {internal_batch_size!r}")
    high = max_positions if max_positions else None
    if not (_is_int(max_tokens) and max_tokens >= min_tokens and (high is None or max_tokens <= high)):
        allowed = f"from {min_tokens} to {high}" if high else f"at least {min_tokens}"
        raise ValueError(f"max_tokens must be an integer {allowed}; got {max_tokens!r}")
    check_precision(precision)
    return Options(target, n_steps, method, baseline, keep_special_tokens, internal_batch_size, max_tokens, precision,
                   float(tolerance), max_steps)


def check_steps(method, n_steps) -> None:
    """A known rule and a number of its points it can take (at least ``min_steps(method)``, at most
    ``MAX_STEPS``), or ``"auto"``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    low = min_steps(method)
    if not (n_steps == AUTO or (_is_int(n_steps) and low <= n_steps <= MAX_STEPS)):
        raise ValueError(f"n_steps must be an integer from {low} to {MAX_STEPS} for method {method}, or "
                         f"\"{AUTO}\"; got {n_steps!r}")


def check_choice(name: str, value, choices) -> None:
    """Refuse ``value`` unless it is one of ``choices`` (the message names them all)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_flag(name: str, value) -> None:
    """Refuse ``value`` unless it is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false; got {value!r}")


def auto_settings(n_steps, tolerance, max_steps) -> tuple:
    """``(tolerance, max_steps)`` checked, their defaults where None; refused with a fixed ``n_steps`` (they go
    with ``n_steps="auto"`` only, as a server refuses them otherwise)."""
    if n_steps != AUTO and (tolerance is not None or max_steps is not None):
        raise ValueError(f"tolerance and max_steps go with n_steps=\"{AUTO}\" (the engine then chooses the steps); "
                         f"with n_steps {n_steps!r} leave them out")
    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    max_steps = DEFAULT_MAX_STEPS if max_steps is None else max_steps
    check_auto(tolerance, max_steps)
    return tolerance, max_steps


def check_auto(tolerance, max_steps) -> None:
    """The settings of ``n_steps="auto"``: a tolerance in (0, 1) and a cap on the points."""
    if not (isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and 0 < tolerance < 1):
        raise ValueError(f"tolerance must be a number between 0 and 1 (the relative error n_steps \"auto\" aims for, "
                         f"e.g. {DEFAULT_TOLERANCE}); got {tolerance!r}")
    if not (_is_int(max_steps) and MIN_MAX_STEPS <= max_steps <= MAX_STEPS):
        raise ValueError(f"max_steps must be an integer from {MIN_MAX_STEPS} to {MAX_STEPS} (the most points n_steps "
                         f"\"auto\" may use); got {max_steps!r}")


def check_sequences(sequence_or_list) -> tuple[list[str], bool]:
    """Return ``(sentences, was_single)``; raise ``ValueError`` for anything but non-empty text."""
    single = isinstance(sequence_or_list, str)
    items = [sequence_or_list] if single else sequence_or_list
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError("sequence must be a non-empty string, or sequences a non-empty list of strings")
    for index, item in enumerate(items):
        where = "sequence" if single else f"sequences[{index}]"
        if not isinstance(item, str):
            raise ValueError(f"{where} must be a string; got {type(item).__name__}")
        if not item.strip():
            raise ValueError(f"{where} is empty: send the sentence to attribute")
    return list(items), single


def check_token_counts(full_lengths, special_tokens: int, single: bool) -> None:
    """Raise ``ValueError`` for a sentence the tokenizer turns into special tokens alone (only control, format or
    zero-width characters, say): there would be nothing to attribute."""
    for index, length in enumerate(full_lengths):
        if length <= special_tokens:
            where = "sequence" if single else f"sequences[{index}]"
            raise ValueError(f"{where} has no token the model reads (the tokenizer keeps none of its characters): "
                             "send the sentence to attribute")
