"""An answer inflated while its bytes arrive: the bound and the refusals of :func:`~intgrads.answer.checks.
decompress_bounded`, met piece by piece.

:class:`StreamedAnswer` takes the gzip body a chunk at a time (``feed``) and inflates it at once, so that when
the last chunk arrives only the end of the stream and the checks are left (``answer``). The bound is the same as
for a whole body, kept at every moment: after ``n`` bytes in, at most ``MAX_INFLATION`` x n + ``INFLATION_SLACK``
bytes out. Input that would inflate past it waits (zlib's ``unconsumed_tail``) until more bytes arrive, so an
answer whose first records compress well (zero gradients) is not refused early, and a gzip bomb never holds more
than the bound of what has arrived. A body that is not gzip is left alone (``active`` False): the caller reads
it as before.
"""

from __future__ import annotations

from .checks import GZIP_WBITS, INFLATION_SLACK, MAX_INFLATION, AnswerInvalid, _zlib, load_checked

GZIP_MAGIC = b"\x1f\x8b"
PIECE_OUT = 4 << 20   # bytes inflated per call: zlib sizes its output buffer by the most it may give


class StreamedAnswer:
    """Inflates a gzip answer as its chunks arrive (see the module docstring); ``feed`` never raises: the first
    fault is kept and raised by :meth:`answer`."""

    def __init__(self):
        self.active = None            # None until the first bytes: then whether they are gzip
        self.error: AnswerInvalid | None = None
        self._inflater = _zlib.decompressobj(GZIP_WBITS)
        self._pieces: list = []
        self._tail = b""              # input held back by the bound
        self._in = 0
        self._out = 0

    def feed(self, chunk: bytes) -> None:
        if not chunk or self.active is False or self.error is not None:
            return
        if self.active is None:
            self.active = chunk[:2] == GZIP_MAGIC
            if not self.active:
                return
        self._in += len(chunk)
        self._tail = self._tail + chunk if self._tail else chunk
        try:
            self._inflate()
        except AnswerInvalid as error:
            self.error = error
            self._pieces, self._tail = [], b""

    def _inflate(self) -> None:
        limit = MAX_INFLATION * self._in + INFLATION_SLACK
        while self._tail:
            if self._inflater.eof:
                raise AnswerInvalid("bytes follow the gzip answer")
            room = limit + 1 - self._out   # one byte past the bound tells a bomb from an answer that ends there
            if room <= 0:
                return                 # held back until more bytes arrive (or refused at the end)
            try:
                out = self._inflater.decompress(self._tail, min(room, PIECE_OUT))
            except _zlib.error as error:
                raise AnswerInvalid(f"the gzip answer is damaged ({error})") from None
            self._out += len(out)
            if out:
                self._pieces.append(out)
            tail = self._inflater.unconsumed_tail or self._inflater.unused_data
            if len(tail) == len(self._tail) and not out:
                return
            self._tail = tail

    def raw(self) -> bytes:
        """The inflated bytes of the whole body; raises :class:`AnswerInvalid` (damaged, cut short, past the
        bound, bytes after the stream)."""
        if self.error is not None:
            raise self.error
        if not self.active:
            raise AnswerInvalid("not a gzip answer")
        self._inflate()
        limit = MAX_INFLATION * self._in + INFLATION_SLACK
        if self._out > limit or (self._tail and not self._inflater.eof):
            raise AnswerInvalid(f"the gzip answer of {self._in:,} bytes inflates past {limit:,} bytes: not an "
                                "answer (a gzip bomb?)")
        if not self._inflater.eof:
            raise AnswerInvalid(f"the gzip answer is cut short after {self._in:,} bytes (its stream does not end)")
        pieces, self._pieces = self._pieces, []
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def answer(self, *, compact: bool = False):
        """The checked answer (:func:`~intgrads.answer.checks.load_checked`)."""
        return load_checked(self.raw(), compact=compact)
