"""Answer files that a killed run wrote but never indexed, taken into the index instead of computed again.

A worker renames an answer into place before its row reaches the driver, so a driver killed with SIGKILL can
leave a few whole answer files with no index record. A rerun looks at those files only (a line whose record is
missing while its ``NNNNNN.gzip`` is there) and keeps one when it decodes whole and is the answer the run asks
for: the sentence's tokens, the options, the dtype and the outputs. Its record then says ``"recovered": true``;
any other file is computed again (and replaced), and so is an answer without the keys its record is read from
(``tokens``, ``token_attributions``, ``logits``: ``--outputs`` without them).
"""

from __future__ import annotations

from ..answer.checks import AnswerInvalid, decode_checked
from ..answer.keys import OUTPUT_NAMES, SENDABLE_NAMES
from ..client.index import sentence_fields
from ..client.intake import AnswerRefused, check_asked, index_fields


def recover(done, fields: dict) -> int:
    """Index the whole, matching answer files of ``done.todo`` lines that have no record; they leave the todo
    list. Returns how many were recovered."""
    kept = []
    for line, sentence in done.todo:
        record = _recovered(done.output / f"{line:06d}.gzip", line, sentence, fields) \
            if line not in done.records else None
        if record is None:
            kept.append((line, sentence))
        else:
            done.add(record)
    recovered = len(done.todo) - len(kept)
    done.todo[:] = kept
    return recovered


def _recovered(path, line: int, sentence: str, fields: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        answer = decode_checked(path.read_bytes())
        check_asked(answer, fields, sentence)
        if _outputs(answer) != set(fields.get("outputs") or OUTPUT_NAMES) or _dtype(answer) != fields.get(
                "dtype", "float32"):
            return None
        found = index_fields(answer, None)
    except (OSError, AnswerInvalid, AnswerRefused, ValueError, KeyError):
        return None
    return {"line": line, **sentence_fields(sentence), "file": path.name, **found, "seconds": 0.0, "attempts": 1,
            "url": None, "options": fields, "node": None, "recovered": True}


def _outputs(answer: dict) -> set:
    return {name for name in answer if name in SENDABLE_NAMES}


def _dtype(answer: dict) -> str | None:
    """The float dtype of the answer's first float tensor (NumPy arrays: the checked reader's)."""
    import numpy as np

    for value in answer.values():
        if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
            return str(value.dtype)
    return None
