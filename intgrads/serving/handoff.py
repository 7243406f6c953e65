"""Answers handed over as files on the server's own machine, so that their bytes never cross TorchServe.

A server bound to loopback has a hand-off directory inside its run directory. It is private to the user who
started it (mode 0700, files 0600). A request with ``X-Intgrads-Handoff: file`` gets its answer written there,
as the same gzip bytes the body would hold, under a name the server chooses (``<32 hex>.gzip``). The reply is a
small JSON that names the file. The client renames the file into its output, which copies nothing on one
filesystem.

- Never a half-written file: the answer is written to a hidden ``.*.tmp`` and renamed when complete.
- Uncollected files expire: each write first removes answers older than ``ttl`` seconds and stale temporaries.
- Bounded: when the answers still there plus the new one would pass ``max_bytes``, nothing is written and
  :class:`HandoffFull` is raised (the handler answers 507). Workers write concurrently, so the bound holds to
  within one answer per worker. A disk or quota that fills first (ENOSPC, EDQUOT, EFBIG) is the same 507: the
  client then asks for the answer in the body.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import time
from pathlib import Path

NAME = re.compile(r"^[0-9a-f]{32}\.gzip$")
DEFAULT_TTL_SECONDS = 600
DEFAULT_MAX_BYTES = 4 * 1024 ** 3
SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)   # no room on the disk, the quota, or the file-size limit


class HandoffFull(Exception):
    """The hand-off directory has no room for this answer; the message says how full it is."""


class HandoffDir:
    """The server side of the hand-off: ``put(payload) -> Path``."""

    def __init__(self, path, *, max_bytes: int = DEFAULT_MAX_BYTES, ttl: float = DEFAULT_TTL_SECONDS):
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.ttl = float(ttl)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    @classmethod
    def from_environment(cls, environ=os.environ) -> "HandoffDir | None":
        """The directory the launcher set up (``INTGRADS_HANDOFF_DIR``, ``..._MAX_BYTES``, ``..._TTL``), if any."""
        path = environ.get("INTGRADS_HANDOFF_DIR")
        max_bytes = int(environ.get("INTGRADS_HANDOFF_MAX_BYTES", DEFAULT_MAX_BYTES))
        if not path or max_bytes <= 0:
            return None
        return cls(path, max_bytes=max_bytes, ttl=float(environ.get("INTGRADS_HANDOFF_TTL", DEFAULT_TTL_SECONDS)))

    def sweep(self, now: float | None = None) -> int:
        """Remove expired answers and temporaries older than the ttl; returns the bytes of what is left."""
        now = time.time() if now is None else now
        left = 0
        for entry in os.scandir(self.path):
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:   # collected meanwhile
                continue
            expired = now - info.st_mtime > self.ttl
            if expired and (NAME.match(entry.name) or entry.name.endswith(".tmp")):
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass
                continue
            left += info.st_size
        return left

    def put(self, payload: bytes) -> Path:
        """Write ``payload`` as a new answer file; raise :class:`HandoffFull` when it would pass the bound."""
        used = self.sweep()
        if used + len(payload) > self.max_bytes:
            raise HandoffFull(f"the hand-off directory holds {used / 1e6:.0f} MB of uncollected answers and this "
                              f"one has {len(payload) / 1e6:.1f} MB, over its {self.max_bytes / 1e6:.0f} MB bound: "
                              f"collect them, wait {self.ttl:.0f} s for them to expire, or ask without "
                              "X-Intgrads-Handoff to get the answer in the body")
        name = secrets.token_hex(16) + ".gzip"
        temporary = self.path / f".{name}.tmp"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(payload)
            final = self.path / name
            os.replace(temporary, final)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            if error.errno in SPACE_ERRORS:
                raise HandoffFull(f"the hand-off directory's disk has no room for this answer of "
                                  f"{len(payload) / 1e6:.1f} MB ({os.strerror(error.errno)}): ask without "
                                  "X-Intgrads-Handoff to get it in the body") from None
            raise
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return final
