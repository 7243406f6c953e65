"""A replica's turns: one request's work at a time, at most ``max_queued`` waiting, past that a 503 at once.

Ray Serve's own ``max_queued_requests`` counts per caller (the HTTP proxy, or the front's handle), not per replica,
and answers in plain text; this bound is the replica's, and its refusal is the service's JSON error with
``Retry-After``: the queue times the mean work time seen so far (an estimate, at least 1 s, at most 300 s).
A request takes a turn only once its whole body has come, so a slow upload never holds one.
"""

from __future__ import annotations

import asyncio
import time

from ..serving.replies import error_reply
from ..serving.values import RequestError


class Busy(Exception):
    """The queue is full; ``reply`` is the 503 to send."""

    def __init__(self, reply):
        super().__init__(reply.message)
        self.reply = reply


class Turns:
    """See the module docstring."""

    def __init__(self, max_queued: int):
        self.max_queued = int(max_queued)
        self.lock = asyncio.Lock()
        self.waiting = 0
        self.mean_seconds = 1.0

    async def run(self, work, *args):
        """``work(*args)`` in a thread, in its turn; raises :class:`Busy` when ``max_queued`` already wait."""
        if self.waiting >= self.max_queued and self.lock.locked():
            wait = max(1, min(300, round((self.waiting + 1) * self.mean_seconds)))
            raise Busy(error_reply(RequestError(
                f"the server is busy: {self.waiting} requests wait for this replica (at most {self.max_queued}); "
                f"send it again in about {wait} s", status=503, retry_after=wait)))
        self.waiting += 1
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1
        try:
            started = time.monotonic()
            result = await asyncio.to_thread(work, *args)
            self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * (time.monotonic() - started)
            return result
        finally:
            self.lock.release()
