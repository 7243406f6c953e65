"""Starlette's view of a request and a response, to and from the service's (``Incoming``, ``Reply``).

The body is read as it arrives, refused past the server's ``max_body_bytes`` (Ray's proxy sets no bound) and
past its deadline (408: a stalled upload costs a socket, never a replica's turn). A caller that is not on this
machine must show the inference key (``Authorization: Bearer KEY``, the scheme in any case) when the server has
one. The caller's address is the proxy's peer, which a remote client cannot forge; ``X-Forwarded-For`` is believed
only from a proxy the operator names (``trusted``): without one, a request that carries it needs the key, and a
request from a named proxy without it needs the key too.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..serving.body import body_parts
from ..serving.replies import JSON_TYPE, Reply, error_reply
from ..serving.request import RequestError, body_too_big, lower_keys
from ..serving.incoming import Incoming

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


def is_local(request: Request, trusted: tuple = ()) -> bool:
    """The caller is on this machine: a loopback peer that is not a named proxy, or, through a named proxy (the
    HTTP proxy then puts the forwarded caller in the peer's place), a loopback caller behind it. Without a named
    proxy, a request that says it was forwarded is not local."""
    host = request.client.host if request.client else None
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded is None:
        return is_loopback(host) and host not in trusted
    return bool(trusted) and is_loopback(host) and is_loopback(forwarded.split(",")[-1].strip())


def check_key(request: Request, key: str | None, trusted: tuple = ()) -> None:
    """Raise :class:`Refused` (401) when the server has a key, the caller is not on this machine and did not
    send the key (``Authorization: Bearer KEY``; the scheme's case does not matter, RFC 7235)."""
    if not key or is_local(request, trusted):
        return
    scheme, _, sent = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), key.encode()):
        raise Refused(RequestError(KEY_REFUSED, status=401))


def body_late(seconds: float) -> RequestError:
    return RequestError(f"the request body did not arrive within {seconds:g} s; send it whole, at once",
                        status=408)


async def read_body(request: Request, limit: int, seconds: float = 0) -> bytes:
    """The body, read as it comes, refused with 413 once past ``limit`` bytes and with 408 when it is not whole
    ``seconds`` after the request came (0: no deadline)."""
    chunks, size = [], 0
    deadline = time.monotonic() + seconds
    stream = request.stream().__aiter__()
    while True:
        try:
            if seconds > 0:
                chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - time.monotonic()))
            else:
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return b"".join(chunks)
        except asyncio.TimeoutError:
            raise Refused(body_late(seconds)) from None
        size += len(chunk)
        if size > limit:
            raise Refused(body_too_big(limit))
        chunks.append(chunk)


async def incoming(request: Request, *, max_body_bytes: int, key: str | None, explain: bool = False,
                   body_seconds: float = 0, trusted: tuple = ()) -> Incoming:
    """The service's view of ``request``: its body as parts, its headers, its query string."""
    check_key(request, key, trusted)
    raw = await read_body(request, max_body_bytes, body_seconds)
    headers = lower_keys(dict(request.headers))
    try:
        parts, content_type = body_parts(raw, headers.get("content-type", ""))
    except RequestError as error:
        raise Refused(error) from None
    if content_type:
        headers["content-type"] = content_type
    return Incoming(parts, headers, query=list(request.query_params.multi_items()), explain=explain)


def response(reply: Reply) -> Response:
    """A Starlette response: a gzip body in pieces (a streamed, chunked response), any other whole. A refused
    body that may not have been read whole (408, 413) closes the connection."""
    headers = {name: value for name, value in reply.headers.items()}
    if reply.status in (408, 413):
        headers["Connection"] = "close"
    pieces = reply.pieces()
    if len(pieces) > 1:
        return StreamingResponse(iter(pieces), status_code=reply.status, media_type=reply.content_type,
                                 headers=headers)
    return Response(pieces[0], status_code=reply.status, media_type=reply.content_type, headers=headers)


def json_response(status: int, value) -> Response:
    return Response(json.dumps(value), status_code=status, media_type=JSON_TYPE)
