"""What a server answers, front-end neutral: a :class:`Reply` (status, content type, headers, body, the counters
for metrics), made from an engine answer or a :class:`~intgrads.serving.request.RequestError`.

An answer is sent one of three ways (``answer_reply``): the JSON summary (``Accept: application/json`` or the
``/explanations`` route), the gzip answer in the body, or, asked with ``X-Intgrads-Handoff: file`` on a server
with a hand-off directory, the gzip answer written as a file there and a small JSON naming it. A one-sentence
answer carries its index record in ``X-Intgrads-Summary``; every answer its worker's own time in
``X-Intgrads-Engine-Ms`` and ``X-Intgrads-Encode-Ms``. A gzip body may go out in pieces (``Reply.pieces``): front
ends move big bodies faster that way (docs/benchmarks.md, part 10).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from ..answer.keys import HANDOFF_HEADER, SUMMARY_HEADER
from ..engine.diagnostics import NON_FINITE
from .handoff import HandoffFull
from .request import RequestError

JSON_TYPE = "application/json"
GZIP_TYPE = "application/gzip"
# A gzip body over this size goes out in pieces of this size; INTGRADS_PIECE_BYTES overrides it (0: whole bodies).
PIECE_BYTES = 2 * 1024 * 1024
STATUS_COUNTER = "IntgradsRequests"   # counted by status for every reply; the others for answers only


@dataclass
class Reply:
    """One request's reply: ``counters`` are the metrics of an answer (engine and encode seconds, token-steps,
    answer bytes, warnings); ``streamable`` marks a gzip answer body that may be sent in pieces."""

    status: int
    body: bytes | str
    content_type: str = JSON_TYPE
    headers: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)
    streamable: bool = False
    message: str = "OK"

    @property
    def phrase(self) -> str:
        """The HTTP reason phrase: one line of visible ASCII (an error's message, cut to 200 characters)."""
        cleaned = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in self.message[:200].replace("\n", " "))
        return cleaned or "Error"

    def pieces(self, size: int | None = None) -> list:
        """The body in pieces of ``size`` bytes (default: :func:`piece_bytes`); one piece when it is not a gzip
        answer, when it is small, or when the size is 0."""
        size = piece_bytes() if size is None else size
        body = self.body.encode("utf-8") if isinstance(self.body, str) else self.body
        if not self.streamable or size <= 0 or len(body) <= size:
            return [body]
        view = memoryview(body)
        return [bytes(view[start:start + size]) for start in range(0, len(body), size)]


def piece_bytes() -> int:
    try:
        return int(os.environ.get("INTGRADS_PIECE_BYTES", PIECE_BYTES))
    except ValueError:
        return PIECE_BYTES


def error_reply(error: RequestError) -> Reply:
    headers = {}
    if error.extra.get("retry_after") is not None:
        headers["Retry-After"] = str(int(error.extra["retry_after"]))
    return Reply(error.status, json.dumps(error.to_json()), JSON_TYPE, headers, message=error.message)


def refuse_non_finite(answer):
    """An answer with NaN or infinity is not sent: 422 naming the sentence and what to try."""
    for index, item in enumerate(answer if isinstance(answer, list) else [answer]):
        for warning in flat_warnings(item):
            if warning.startswith(NON_FINITE):
                where = "" if not isinstance(answer, list) else f"sequences[{index}]: "
                raise RequestError(f"{where}{warning}", status=422)


def flat_warnings(answer: dict) -> list:
    """An answer's warnings as one list (a causal LM's come one list per target token)."""
    warnings = answer.get("warnings", [])
    return [w for item in warnings for w in item] if answer.get("kind") == "causal_lm" else list(warnings)


def answer_reply(request, answer, engine_seconds: float, *, gzip_level: int, handoff=None) -> Reply:
    """The reply for ``request``'s engine ``answer`` (see the module docstring); a hand-off directory with no
    room gives the 507 error reply."""
    from ..answer.codec import encode_answer   # here: error replies and a front that only routes need no torch
    from ..answer.summary import index_record, summarize_answer

    started = time.perf_counter()
    headers = {}
    if request.single:
        record = index_record(summarize_answer(answer))
        headers[SUMMARY_HEADER] = json.dumps(record, ensure_ascii=True, allow_nan=True)
    if request.want_json:
        summary = summarize_answer(answer) if request.single else [summarize_answer(item) for item in answer]
        reply = Reply(200, json.dumps(summary), JSON_TYPE, headers)
        size = len(reply.body)
    else:
        encoding = request.encoding or {}
        dtype = encoding.get("dtype")
        payload = encode_answer(answer, outputs=encoding.get("outputs"),
                                dtype=None if dtype in (None, "float32") else dtype, level=gzip_level)
        size = len(payload)
        reply = Reply(200, payload, GZIP_TYPE, headers, streamable=True)
        if request.handoff and handoff is not None:
            try:
                path = handoff.put(payload)
            except HandoffFull as error:
                return error_reply(RequestError(str(error), status=507))
            reply = Reply(200, json.dumps({"file": str(path), "bytes": size}), JSON_TYPE,
                          {**headers, HANDOFF_HEADER: str(path)})
    encode_seconds = time.perf_counter() - started
    reply.headers.update({"X-Intgrads-Engine-Ms": f"{engine_seconds * 1e3:.1f}",
                          "X-Intgrads-Encode-Ms": f"{encode_seconds * 1e3:.1f}"})
    items = answer if isinstance(answer, list) else [answer]
    reply.counters = {"IntgradsEngineSeconds": engine_seconds, "IntgradsEncodeSeconds": encode_seconds,
                      "IntgradsTokenSteps": sum(len(item["tokens"]) * item["n_steps"] for item in items),
                      "IntgradsAnswerBytes": size,
                      "IntgradsWarnings": sum(len(flat_warnings(item)) for item in items)}
    return reply
