"""The answer's wire format: ``gzip(torch.save(obj))``, as the old tool sent it.

Any gzip reader opens it (the old tool's snippet: ``gzip.open`` -> ``BytesIO`` -> ``torch.load``);
the ``isal`` package writes the same gzip format about ten times faster than the standard library,
so it is used when installed.
"""

from __future__ import annotations

import gzip
import io
from typing import Any

import torch

from .keys import DTYPE_NAMES, OUTPUT_NAMES

try:  # the same gzip format, written by ISA-L
    from isal import igzip as _gzip

    GZIP_LEVEL = 1
except ImportError:  # pragma: no cover - isal is a declared dependency
    _gzip = gzip
    GZIP_LEVEL = 1


# The torch dtype of each answer dtype name (keys.DTYPE_NAMES).
DTYPES = {"float32": torch.float32, "float16": torch.float16}
assert tuple(DTYPES) == DTYPE_NAMES


def prepare_answer(obj: Any, *, outputs=None, dtype: str | None = None) -> Any:
    """An answer (or list of answers) reduced to the keys in ``outputs`` (None: all; metadata keys are
    always kept) with its floating-point tensors cast to ``dtype`` ("float32" or "float16"; None: as is).
    Raises ValueError naming the allowed values for an unknown output name or dtype."""
    if isinstance(obj, list):
        return [prepare_answer(item, outputs=outputs, dtype=dtype) for item in obj]
    if outputs is not None:
        unknown = [name for name in outputs if name not in OUTPUT_NAMES]
        if unknown:
            raise ValueError(f"unknown output(s) {', '.join(map(repr, unknown))}; outputs may name "
                             f"{', '.join(OUTPUT_NAMES)}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    target = DTYPES.get(dtype)
    out = {}
    for key, value in obj.items():
        if outputs is not None and key in OUTPUT_NAMES and key not in outputs:
            continue
        if target is not None and isinstance(value, torch.Tensor) and value.is_floating_point():
            value = value.to(target)
        out[key] = value
    return out


def encode_answer(obj: Any, *, outputs=None, dtype: str | None = None) -> bytes:
    """Serialise an answer (or a list of answers) to gzip-compressed ``torch.save`` bytes; ``outputs`` and
    ``dtype`` select keys and cast floats first (see :func:`prepare_answer`)."""
    if outputs is not None or dtype is not None:
        obj = prepare_answer(obj, outputs=outputs, dtype=dtype)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return _gzip.compress(buffer.getbuffer(), compresslevel=GZIP_LEVEL)


def decode_answer(payload: bytes) -> Any:
    """Inverse of :func:`encode_answer`; loads with ``weights_only=True``."""
    return torch.load(io.BytesIO(_gzip.decompress(payload)), weights_only=True)


def load_answer(path) -> Any:
    """Load an answer file saved from the server (``curl ... --output FILE``)."""
    with open(path, "rb") as handle:
        return decode_answer(handle.read())
