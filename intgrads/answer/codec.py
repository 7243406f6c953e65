"""The answer's wire format: ``gzip(torch.save(obj))``, as the old tool sent it.

Any gzip reader opens it (the old tool's snippet: ``gzip.open`` -> ``BytesIO`` -> ``torch.load``). Two
levels are written: 1 (:func:`encode_answer`'s default), ISA-L's fastest compression, about ten times faster than
the standard library's; and 0, *stored*: the same gzip container around uncompressed deflate blocks, several
times faster again to write and to check, ~8% larger for float32 gradients. Servers and the batch job store by
default (``--gzip-level``): their answers are checked by a client, and inflating costs more than the bytes saved.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from typing import Any

import torch

from .keys import ALL_SENDABLE_NAMES, DTYPE_NAMES, LM_ALWAYS_NAMES, named_outputs
from .torchsave import save_bytes

try:  # the same gzip format, written by ISA-L
    from isal import igzip as _gzip
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a declared dependency
    _gzip = gzip
    _crc32 = zlib.crc32

GZIP_LEVEL = 1          # encode_answer's default: ISA-L level 1 (servers: 0, launcher.archive.gzip_level)
GZIP_LEVELS = (0, 1)    # 0: stored (no compression), 1: compressed
STORED_BLOCK = 65535    # the largest stored deflate block


# The torch dtype of each answer dtype name (keys.DTYPE_NAMES).
DTYPES = {"float32": torch.float32, "float16": torch.float16}
assert tuple(DTYPES) == DTYPE_NAMES


def prepare_answer(obj: Any, *, outputs=None, dtype: str | None = None) -> Any:
    """An answer (or list of answers) reduced to the keys in ``outputs`` (None: all; metadata keys are
    always kept, and a causal LM answer's ``LM_ALWAYS_NAMES``; "idgi" brings "idgi_token_attributions") with its
    floating-point tensors cast to ``dtype``
    ("float32" or "float16"; None: as is). Raises ValueError naming the allowed values for an unknown output name
    or dtype."""
    if isinstance(obj, list):
        return [prepare_answer(item, outputs=outputs, dtype=dtype) for item in obj]
    if outputs is not None:
        unknown = [name for name in outputs if name not in ALL_SENDABLE_NAMES]
        if unknown:
            raise ValueError(f"unknown output(s) {', '.join(map(repr, unknown))}; outputs may name "
                             f"{', '.join(ALL_SENDABLE_NAMES)}")
        outputs = named_outputs(outputs)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    target = DTYPES.get(dtype)
    out = {}
    always = LM_ALWAYS_NAMES if obj.get("kind") == "causal_lm" else ()
    for key, value in obj.items():
        if outputs is not None and key in ALL_SENDABLE_NAMES and key not in outputs and key not in always:
            continue
        if target is not None and isinstance(value, torch.Tensor) and value.is_floating_point():
            value = value.to(target)
        out[key] = value
    return out


def gzip_stored(data) -> bytes:
    """``data`` as one gzip member (RFC 1952) whose deflate stream (RFC 1951, 3.2.4) is stored blocks.

    Header: 1f 8b, method 8, no flags, mtime 0, xfl 0, OS 255. Then ceil(n / 65535) blocks (one, empty, when
    n = 0), each a byte BFINAL (1 on the last) with BTYPE 00, then LEN and NLEN = LEN xor 0xFFFF as
    little-endian 16-bit words, then LEN bytes of data. Trailer: CRC-32 of the data and n mod 2^32. Its size is
    n + 18 + 5 ceil(n / 65535)."""
    view = memoryview(data).cast("B")
    size = len(view)
    blocks = max(1, -(-size // STORED_BLOCK))
    pieces = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"]
    for block in range(blocks):
        chunk = view[block * STORED_BLOCK:(block + 1) * STORED_BLOCK]
        pieces.append(struct.pack("<BHH", 1 if block == blocks - 1 else 0, len(chunk), len(chunk) ^ 0xFFFF))
        pieces.append(chunk)
    pieces.append(struct.pack("<II", _crc32(view) & 0xFFFFFFFF, size & 0xFFFFFFFF))
    return b"".join(pieces)   # one copy of the data


def encode_answer(obj: Any, *, outputs=None, dtype: str | None = None, level: int = GZIP_LEVEL) -> bytes:
    """Serialise an answer (or a list of answers) to gzip ``torch.save`` bytes; ``outputs`` and ``dtype``
    select keys and cast floats first (see :func:`prepare_answer`). ``level`` 1 compresses (ISA-L level 1);
    0 stores (:func:`gzip_stored`: faster, ~8% larger for float32 gradients). Both load the same way."""
    if level not in GZIP_LEVELS:
        raise ValueError(f"level must be one of {', '.join(map(str, GZIP_LEVELS))}; got {level!r}")
    if outputs is not None or dtype is not None:
        obj = prepare_answer(obj, outputs=outputs, dtype=dtype)
    elif isinstance(obj, list):
        obj = [dict(item) if isinstance(item, dict) and type(item) is not dict else item for item in obj]
    elif isinstance(obj, dict) and type(obj) is not dict:
        obj = dict(obj)   # an intgrads.Answer: written as the plain dict weights_only loading reads
    raw = save_bytes(obj)   # torch.save's bytes, its CRC-32s from ISA-L
    if level == 0:
        return gzip_stored(raw)
    return _gzip.compress(raw, compresslevel=level)


def decode_answer(payload: bytes) -> Any:
    """Inverse of :func:`encode_answer`; loads with ``weights_only=True``."""
    return torch.load(io.BytesIO(_gzip.decompress(payload)), weights_only=True)


def load_answer(path) -> Any:
    """Load an answer file saved from the server (``curl ... --output FILE``)."""
    with open(path, "rb") as handle:
        return decode_answer(handle.read())
