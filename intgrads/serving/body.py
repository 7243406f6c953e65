"""A raw HTTP body turned into the parts a handler reads (``intgrads.serving.request``), for front ends that get
the body as bytes (the Ray app) rather than decoded by their server (TorchServe).

TorchServe decodes a form and hands the handler its fields; it also decodes a ``curl -d '{"sequence": ...}'``
sent without a Content-Type (curl then says ``application/x-www-form-urlencoded``) as a form, whose one field is
the JSON text, so the old tool's bare curl gets a 400 there. Here, with the bytes in hand:

- a form-typed body whose text is a JSON object (its first visible character ``{``) is read as JSON: the old
  tool's bare curl answers 200;
- a form (``application/x-www-form-urlencoded``, or ``multipart/form-data``) becomes its fields, each given once
  (a field given twice is a 400, where TorchServe keeps the last);
- any other body is ``{"body": bytes}`` with its own Content-Type.

:func:`body_parts` returns the parts and the Content-Type they are to be read with.
"""

from __future__ import annotations

import email.parser
import email.policy
from urllib.parse import parse_qsl

from .request import RequestError, fields_once

FORM_TYPE = "application/x-www-form-urlencoded"
MULTIPART_TYPE = "multipart/form-data"
JSON_TYPE = "application/json"


def media_type(content_type: str) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def body_parts(raw: bytes, content_type: str) -> tuple[dict, str]:
    """``(parts, content_type)`` for a body of ``raw`` bytes sent as ``content_type`` (see the module docstring)."""
    kind = media_type(content_type)
    if not raw:
        return {}, content_type
    if kind == FORM_TYPE:
        if raw.lstrip()[:1] == b"{":   # JSON sent without its Content-Type (curl -d's default)
            return {"body": raw}, JSON_TYPE
        return _form_fields(raw), content_type
    if kind == MULTIPART_TYPE:
        return _multipart_fields(raw, content_type), content_type
    return {"body": raw}, content_type


def _form_fields(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except UnicodeDecodeError as error:
        raise RequestError(f"the form is not valid UTF-8 (byte {error.start}): send text encoded as UTF-8") from None
    return {name: value.encode("utf-8") for name, value in fields_once(pairs, "the form").items()}


def _multipart_fields(raw: bytes, content_type: str) -> dict:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + raw)
    if not message.is_multipart():
        raise RequestError("the multipart form could not be read: send JSON (Content-Type: application/json)")
    pairs = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            pairs.append((str(name), part.get_payload(decode=True) or b""))
    return fields_once(pairs, "the form")
