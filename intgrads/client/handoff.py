"""The client's side of an answer handed over as a file: taken only when it is provably the answer asked for.

A server on this machine may answer ``X-Intgrads-Handoff: file`` with the name of a file it wrote instead of the
bytes (``intgrads.serving.handoff``). The client moves that file into its output. A server it cannot trust (an
old one, a broken one, another user's, or a fake) could name any file of the user's, so the client takes one
only when all of these hold, and otherwise leaves the file where it is, untouched, and asks for the body:

1. it asked for a hand-off in this very request (a header in any other response is ignored);
2. the server is the user's own: the process listening on the URL's loopback port runs as this user
   (:func:`intgrads.system.listener_uid`), so whatever it names it could have written itself;
3. the file is ``<32 hex>.gzip`` directly inside a directory named ``handoff`` that is the user's own, private
   (no access for group or others), not a symbolic link, and the same directory (device and inode) as this
   server's earlier hand-offs; the file is a regular file of the user's with one link, as many bytes as the
   server said, changed no earlier than the request was sent;
4. its bytes are a whole, consistent gzip answer (:func:`intgrads.answer.checks.decode_checked`) for the
   sentence asked about (:func:`tokens_match`) and the options asked for (the caller's check).

Only then is it renamed into the output (after an fsync; a copy across filesystems), and the answer it holds is
returned, so that the index is built from the file itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import threading
import unicodedata
from pathlib import Path
from urllib.parse import urlsplit

from ..answer.checks import decode_checked
from ..system import listener_uid
from .index import file_mode, write_atomically

HANDOFF_NAME = re.compile(r"^[0-9a-f]{32}\.gzip$")
CLOCK_SLACK = 2.0        # seconds: file times are coarser than the clock
SPECIAL_TOKEN = re.compile(r"^(\[[A-Z]+\]|<[a-z/]+>|<\|[a-z_]+\|>)$")
SUBWORD_MARKS = ("##", "\u2581", "\u0120", "\u010a")   # WordPiece, SentencePiece, byte-level BPE (space, newline)


class HandoffRefused(ValueError):
    """The file a server named is not provably the answer asked for; it was left untouched."""


def on_this_machine(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host == "localhost" or host == "::1" or host.startswith("127.")


def server_is_ours(url: str) -> bool:
    """True when the process listening on ``url``'s loopback port runs as this user."""
    parts = urlsplit(url)
    if not on_this_machine(url):
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return listener_uid(parts.hostname or "127.0.0.1", port) == os.getuid()


def _normal(text: str) -> str:
    """Text compared without case, accents or spaces."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed.casefold() if not unicodedata.combining(ch) and not ch.isspace())


def tokens_match(tokens, sentence: str) -> bool:
    """True when every token of the answer that reads as ASCII text once case, accents and subword marks are set
    aside is found in the sentence, in order: the answer is of this sentence (a truncated one, of its beginning).
    Special tokens are skipped, and so are tokens that do not read as ASCII (a byte-level BPE spells other
    characters as bytes), so a sentence of other scripts is checked less."""
    text, position = _normal(sentence), 0
    for token in tokens:
        if SPECIAL_TOKEN.match(token):
            continue
        for mark in SUBWORD_MARKS:
            if token.startswith(mark):
                token = token[len(mark):]
        piece = _normal(token)
        if not piece or not piece.isascii():
            continue
        found = text.find(piece, position)
        if found < 0:
            return False
        position = found + len(piece)
    return True


class HandoffTaker:
    """Takes hand-off files for one client; remembers each server's hand-off directory (device, inode)."""

    def __init__(self):
        self._folders: dict[str, tuple[int, int]] = {}
        self._ours: dict[str, bool] = {}
        self._lock = threading.Lock()

    def may_ask(self, url: str) -> bool:
        """Whether asking ``url`` for files makes sense: a loopback server that runs as this user."""
        with self._lock:
            known = self._ours.get(url)
        if known is None:
            known = server_is_ours(url)
            with self._lock:
                self._ours[url] = known
        return known

    def take(self, url: str, pointer: dict, destination: Path, *, sent_at: float, check) -> dict:
        """Move the file named in ``pointer`` (``{"file": PATH, "bytes": N}``) to ``destination`` once it passes
        the checks of the module docstring; ``check(answer)`` adds the caller's own (sentence, options) and
        raises :class:`HandoffRefused`. Returns the answer it holds. Raises HandoffRefused (the file untouched)
        or OSError (unreachable)."""
        path, size = _pointer(pointer)
        folder = self._check_folder(url, path.parent)
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            info = os.fstat(descriptor)
            _check_file(path, info, size, sent_at)
            data = _read_all(descriptor, info.st_size)
            try:
                answer = decode_checked(data)
            except ValueError as error:
                raise HandoffRefused(f"{path} is not a whole answer: {error}") from None
            check(answer)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
            raise HandoffRefused(f"{path} changed while it was checked")
        _move(path, destination, data)
        with self._lock:
            self._folders.setdefault(url, folder)
        return answer

    def _check_folder(self, url: str, folder: Path) -> tuple[int, int]:
        info = os.lstat(folder)
        if folder.name != "handoff" or not stat.S_ISDIR(info.st_mode):
            raise HandoffRefused(f"{folder} is not a hand-off directory (a real directory named handoff)")
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise HandoffRefused(f"{folder} is not private to this user (owner {info.st_uid}, mode "
                                 f"{stat.S_IMODE(info.st_mode):o})")
        identity = (info.st_dev, info.st_ino)
        with self._lock:
            known = self._folders.get(url)
        if known is not None and known != identity:
            raise HandoffRefused(f"{folder} is not the hand-off directory this server used before")
        return identity


def _pointer(pointer) -> tuple[Path, int]:
    if not isinstance(pointer, dict):
        raise HandoffRefused("the server's hand-off reply is not a JSON object")
    name, size = pointer.get("file"), pointer.get("bytes")
    if not isinstance(name, str) or not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise HandoffRefused("the server's hand-off reply lacks a file name and its size")
    path = Path(name)
    if not (path.is_absolute() and HANDOFF_NAME.match(path.name)) or ".." in path.parts:
        raise HandoffRefused(f"the server named {name[:200]!r}, not a hand-off answer file")
    return path, size


def _check_file(path: Path, info, size: int, sent_at: float):
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_nlink != 1:
        raise HandoffRefused(f"{path} is not a regular file of this user's with one link")
    if info.st_size != size:
        raise HandoffRefused(f"{path} has {info.st_size} bytes, not the {size} the server said")
    if info.st_ctime < sent_at - CLOCK_SLACK:
        raise HandoffRefused(f"{path} was not written for this request (it is older than the request)")


def _read_all(descriptor: int, size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        chunk = os.read(descriptor, min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    if left or os.read(descriptor, 1):
        raise HandoffRefused("the answer file changed size while it was read")
    return b"".join(chunks)


def _move(path: Path, destination: Path, data: bytes):
    """Rename ``path`` to ``destination``; across filesystems write the bytes already read, then drop it."""
    try:
        os.replace(path, destination)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        write_atomically(destination, data)
        path.unlink(missing_ok=True)
        return
    with contextlib.suppress(OSError):   # the server wrote it private to its user: now an answer like any other
        os.chmod(destination, file_mode())
