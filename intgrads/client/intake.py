"""What the client takes from a server's reply, and only that: a bounded body, an answer that is whole and is the
one asked for, and the index fields read from the answer itself.

- :func:`read_capped` reads a body up to a size the client chose (never the server's Content-Length).
- :func:`check_asked` refuses an answer whose settings are not the options asked for (and, for a file handed
  over, whose tokens are not the sentence's).
- :func:`index_fields` builds the index record's answer fields from the decoded answer; a server's
  ``X-Intgrads-Summary`` may only confirm them: its known fields must agree, anything else in it is ignored.
- :func:`rebuilt` turns a checked compact answer back into the whole one the server would have sent.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..answer.checks import decompress_bounded
from ..answer.summary import INDEX_KEYS, LM_INDEX_KEYS, index_record, summarize_answer
from .handoff import HandoffRefused, tokens_match

DEFAULT_MAX_ANSWER_BYTES = 2 * 1024 ** 3   # the largest answer body a client reads (the server's default: 1 GiB)
MAX_POINTER_BYTES = 64 * 1024              # a hand-off reply or an error is a small JSON
CLOSE_FIELDS = ("probability", "convergence_delta", "total_score")
GZIP_MAGIC = b"\x1f\x8b"
MAX_SMALL_BODY = 16 * 1024 ** 2            # a JSON summary or error, inflated


class AnswerRefused(ValueError):
    """The server's answer is not the one asked for, or contradicts its own summary."""


def read_capped(response, cap: int, *, truncate: bool = False, sink=None) -> bytes:
    """The raw body of ``response`` (a streamed ``requests`` response), at most ``cap`` bytes, never reading
    past the cap: a longer one raises :class:`AnswerRefused`, or with ``truncate`` is cut there (an error's
    message). ``sink``, if given, gets each chunk as it arrives (an answer inflated on the way)."""
    chunks, total = [], 0
    while True:
        chunk = response.raw.read(min(1 << 20, cap + 1 - total), decode_content=False)
        if not chunk:
            return b"".join(chunks)
        if sink is not None and total + len(chunk) <= cap:
            sink(chunk)
        chunks.append(chunk)
        total += len(chunk)
        if total > cap:
            if truncate:
                return b"".join(chunks)[:cap]
            raise AnswerRefused(f"the server's body is over {cap:,} bytes, more than this client takes "
                                "(--max-answer-bytes)")


def pointer_of(body: bytes) -> dict:
    """The JSON object of a hand-off reply (``{"file": ..., "bytes": ...}``)."""
    if len(body) > MAX_POINTER_BYTES:
        raise HandoffRefused("the server's hand-off reply is too long")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise HandoffRefused("the server's hand-off reply is not JSON") from None
    if not isinstance(value, dict):
        raise HandoffRefused("the server's hand-off reply is not a JSON object")
    return value


def check_asked(answer: dict, options: dict, sentence: str | None = None) -> None:
    """Raise :class:`AnswerRefused` when a setting the client asked for (n_steps, method, baseline, precision, a
    class target) is not the answer's, or the answer's tokens are not those of ``sentence``."""
    auto = options.get("n_steps") == "auto"   # the engine then chooses the steps, and the points (method)
    causal = answer.get("kind") == "causal_lm"   # its target is text, its tokens the prompt's and the target's
    names = ("n_steps", "method", "baseline", "precision", "score", "interpolate") if causal else (
        "n_steps", "method", "baseline", "precision", "target")
    for name in names:
        wanted = options.get(name)
        if wanted is None or (name == "target" and wanted == "predicted") or (auto and name in ("n_steps", "method")):
            continue
        if answer.get(name) != wanted:
            raise AnswerRefused(f"the answer's {name} is {repr(answer.get(name))[:40]}, not the {wanted!r} asked for")
    if sentence is not None and not causal and not tokens_match(answer.get("tokens") or [], sentence):
        raise AnswerRefused("the answer's tokens are not those of the sentence asked about")


def summary_claims(value: str | None) -> dict:
    """The known index fields of an ``X-Intgrads-Summary`` header; anything else in it (a line, a sentence, an
    error) is dropped."""
    if not value or len(value) > MAX_POINTER_BYTES:
        return {}
    try:
        claims = json.loads(value)
    except (ValueError, RecursionError):
        return {}
    known = tuple(dict.fromkeys(INDEX_KEYS + LM_INDEX_KEYS + ("total_score",)))
    return {key: claims[key] for key in known if isinstance(claims, dict) and key in claims}


def index_fields(answer: dict, header: str | None) -> dict:
    """The index fields of ``answer``, read from it; raises :class:`AnswerRefused` when the server's summary
    header says otherwise."""
    fields = index_record(summarize_answer(answer))
    for key, claimed in summary_claims(header).items():
        actual = fields.get(key)
        if key in CLOSE_FIELDS and isinstance(claimed, (int, float)) and isinstance(actual, (int, float)):
            agree = math.isclose(claimed, actual, rel_tol=1e-5, abs_tol=1e-6) or (
                math.isnan(claimed) and math.isnan(actual))
        else:
            agree = claimed == actual
        if not agree:
            raise AnswerRefused(f"the server's summary says {key} {str(claimed)[:40]!r}, its answer "
                                f"{str(actual)[:40]!r}")
    return fields


def rebuilt(answer: dict) -> tuple[dict, bytes]:
    """A checked compact answer (x and b) turned back into the whole one, and its gzip bytes (imports torch: the
    engine's own interpolation and torch.save)."""
    from ..answer.checks import to_torch
    from ..answer.codec import encode_answer
    from ..answer.rebuild import rebuild_intermediates

    whole = rebuild_intermediates(to_torch(answer))
    return whole, encode_answer(whole)


@dataclass
class Reply:
    """One answered try of :meth:`Client._post`."""

    body: bytes
    url: str
    attempts: int
    headers: object
    handoff: bool = False   # the body names a file the server wrote, and this try asked for one
    compact: bool = False   # the body is an answer with x and b instead of the intermediates, as asked
    sent_at: float = 0.0    # wall-clock time the try was sent (file times are wall-clock)
    answer: dict | None = None   # the checked answer of a gzip body
    stream: object = None        # its StreamedAnswer, fed while the body arrived


def error_text(body: bytes) -> str:
    """The message of an error body (JSON ``error``/``message``/``detail``, else its first 500 characters)."""
    try:
        body = gunzip_if_needed(body)
    except ValueError:
        pass
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return text[:500]
    if isinstance(parsed, dict):
        for key in ("error", "message", "detail"):
            if key in parsed:
                return str(parsed[key])[:2000]
    return text[:500]


def short(exc) -> str:
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."


def retry_after(value) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def gunzip_if_needed(body: bytes) -> bytes:
    """A small body (JSON) that a server may have gzipped, inflated to at most MAX_SMALL_BODY bytes."""
    return decompress_bounded(body, MAX_SMALL_BODY) if body[:2] == GZIP_MAGIC else body
