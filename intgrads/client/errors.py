"""What went wrong with a request: :class:`ClientError` (with the HTTP status, URL and tries), :class:`RunAborted`
(a refusal no sentence gets past) and :func:`no_connection` (why no connection was made, in words)."""

from __future__ import annotations

import socket

import urllib3

FATAL_STATUSES = (401, 403, 404)
# TorchServe refuses a missing or wrong key with 400 {"type": "InvalidKeyException", "message": TOKEN_REFUSED...}
TOKEN_REFUSED = "Token Authorization failed"


class ClientError(Exception):
    """A request that did not give an answer; ``status`` is the HTTP status (None: no HTTP answer)."""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None, attempts: int = 1,
                 interrupted: bool = False, final: bool = False, retry_after: float | None = None,
                 no_server: bool = False):
        super().__init__(message)
        self.no_server = no_server       # no URL of the client ever answered: nothing listens there
        self.status = status
        self.url = url
        self.attempts = attempts
        self.interrupted = interrupted   # the run was stopping: not the sentence's failure
        self.final = final               # asking again would get the same (a wrong answer, a body too big)
        self.retry_after = retry_after   # seconds the server asked to wait (Retry-After)

    @property
    def retryable(self) -> bool:
        """No answer (or a broken one), or a 5xx other than 504: the server's own deadline, which the same request
        meets again."""
        return not self.final and not self.no_server and (self.status is None or (self.status >= 500
                                                                                     and self.status != 504))

    @property
    def fatal(self) -> bool:
        """True when no other sentence can succeed either (no server, bad key, wrong URL or model name)."""
        return self.no_server or self.status in FATAL_STATUSES or (self.status is not None and 400 <= self.status < 500
                                                 and TOKEN_REFUSED in str(self))


START_HINT = "start it with `intgrads --demo` (the demo model) or `intgrads -bp MODEL.pth` (see `intgrads --help`)"


def no_connection(exc) -> str | None:
    """Why ``exc`` (a requests/urllib3 error) made no connection at all, in words ("connection refused", "host not
    found", "no route to host"...); None when a connection was made (and then dropped or timed out)."""
    seen, stack = set(), [exc]
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ConnectionRefusedError):
            return "connection refused"
        if isinstance(error, (socket.gaierror, urllib3.exceptions.NameResolutionError)):
            return "host not found"
        if isinstance(error, OSError) and error.strerror and not isinstance(error, TimeoutError):
            return error.strerror[:1].lower() + error.strerror[1:]
        if isinstance(error, urllib3.exceptions.NewConnectionError):   # (a ConnectTimeoutError in urllib3 2)
            found = no_connection(error.__cause__ or error.__context__)
            return found or "could not connect"
        if isinstance(error, urllib3.exceptions.ConnectTimeoutError):
            return None
        stack.extend([error.__cause__, error.__context__, getattr(error, "reason", None),
                      *(arg for arg in getattr(error, "args", ()) if isinstance(arg, BaseException))])
    return None


class RunAborted(ClientError):
    """The run stopped because the server refused in a way no sentence can get past."""
