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

try:  # the same gzip format, written by ISA-L
    from isal import igzip as _gzip

    GZIP_LEVEL = 1
except ImportError:  # pragma: no cover - isal is a declared dependency
    _gzip = gzip
    GZIP_LEVEL = 1


def encode_answer(obj: Any) -> bytes:
    """Serialise an answer (or a list of answers) to gzip-compressed ``torch.save`` bytes."""
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


def summarize_answer(answer: dict) -> dict:
    """A JSON-able digest of one answer, without the big tensors."""
    logits = answer["logits"].reshape(-1).double()
    probabilities = torch.softmax(logits, dim=0)
    predicted = int(torch.argmax(logits))
    labels = answer.get("label_names") or []
    return {
        "tokens": list(answer["tokens"]),
        "token_attributions": [float(v) for v in answer["token_attributions"]],
        "logits": [float(v) for v in logits],
        "probabilities": [float(v) for v in probabilities],
        "predicted": predicted,
        "label": labels[predicted] if predicted < len(labels) else str(predicted),
        **{key: answer[key] for key in SETTINGS_KEYS if key in answer},
    }


SETTINGS_KEYS = (
    "target", "convergence_delta", "n_steps", "method", "baseline", "keep_special_tokens",
    "layer", "truncated", "family", "layout",
)
