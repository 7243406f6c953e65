"""Starlette's view of a request and a response, to and from the service's (``Incoming``, ``Reply``).

The body is read as it arrives and refused past the server's ``max_body_bytes`` (Ray's proxy sets no bound).
A caller that is not on this machine must show the inference key (``Authorization: Bearer KEY``) when the server
has one; the caller's address is the proxy's peer, which a remote client cannot forge.
"""

from __future__ import annotations

import hmac
import ipaddress
import json

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..serving.body import body_parts
from ..serving.replies import JSON_TYPE, Reply, error_reply
from ..serving.request import RequestError, body_too_big, lower_keys
from ..serving.service import Incoming

KEY_REFUSED = "Token Authorization failed: send the inference key as Authorization: Bearer KEY"


class Refused(Exception):
    """A request answered before the service sees it (too big, or without the key)."""

    def __init__(self, error: RequestError):
        super().__init__(error.message)
        self.reply = error_reply(error)


def is_loopback(host: str | None) -> bool:
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def check_key(request: Request, key: str | None) -> None:
    """Raise :class:`Refused` (401) when the server has a key, the caller is not on this machine and did not
    send the key."""
    if not key or is_loopback(request.client.host if request.client else None):
        return
    sent = request.headers.get("authorization", "")
    if not hmac.compare_digest(sent.encode(), f"Bearer {key}".encode()):
        raise Refused(RequestError(KEY_REFUSED, status=401))


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read as it comes, refused with 413 once past ``limit`` bytes."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(body_too_big(limit))
        chunks.append(chunk)
    return b"".join(chunks)


async def incoming(request: Request, *, max_body_bytes: int, key: str | None, explain: bool = False) -> Incoming:
    """The service's view of ``request``: its body as parts, its headers, its query string."""
    check_key(request, key)
    raw = await read_body(request, max_body_bytes)
    headers = lower_keys(dict(request.headers))
    try:
        parts, content_type = body_parts(raw, headers.get("content-type", ""))
    except RequestError as error:
        raise Refused(error) from None
    if content_type:
        headers["content-type"] = content_type
    return Incoming(parts, headers, query=list(request.query_params.multi_items()), explain=explain)


def response(reply: Reply) -> Response:
    """A Starlette response: a gzip body in pieces (a streamed, chunked response), any other whole."""
    headers = {name: value for name, value in reply.headers.items()}
    pieces = reply.pieces()
    if len(pieces) > 1:
        return StreamingResponse(iter(pieces), status_code=reply.status, media_type=reply.content_type,
                                 headers=headers)
    return Response(pieces[0], status_code=reply.status, media_type=reply.content_type, headers=headers)


def json_response(status: int, value) -> Response:
    return Response(json.dumps(value), status_code=status, media_type=JSON_TYPE)
