"""Reading the client's input: sentences from a text, CSV/TSV or JSONL file or stdin, and TorchServe's key file.
A JSONL line with ``messages``, ``target`` or ``contrast`` is a causal LM request (:class:`PromptRequest`)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path


def read_key_file(path) -> str:
    """The inference key from TorchServe's ``key_file.json`` (``{"inference": {"key": ...}, ...}``)."""
    try:
        with open(path, encoding="utf-8") as handle:
            keys = json.load(handle)
    except OSError as error:
        raise ValueError(f"cannot read the key file {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"the key file {path} is not JSON: {error}") from None
    try:
        key = keys["inference"]["key"]
    except (KeyError, TypeError):
        raise ValueError(f"the key file {path} has no inference key (expected TorchServe's key_file.json, "
                         '{"inference": {"key": ...}, ...})') from None
    if not isinstance(key, str) or not key:
        raise ValueError(f"the key file {path} has an empty inference key")
    return key


def _open_text(path):
    if str(path) == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def guess_format(path) -> str:
    suffix = Path(str(path)).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    return "text"


DEFAULT_COLUMNS = ("sequence", "sentence", "text")
# A JSONL line with any of these (besides "sequence") is a causal LM request: its fields go to the server as they are.
PROMPT_FIELDS = ("sequence", "messages", "target", "contrast")
PROMPT_MARKERS = ("messages", "target", "contrast")


class PromptRequest(str):
    """One causal LM request read from a JSONL line (``sequence`` or ``messages``, ``target``, ``contrast``): the
    string is its fields' canonical JSON (what the index records and a rerun recognises), ``fields`` the fields."""

    def __new__(cls, fields: dict):
        value = super().__new__(cls, json.dumps(fields, sort_keys=True, ensure_ascii=False))
        value.fields = dict(fields)
        return value

    def __reduce__(self):
        return PromptRequest, (self.fields,)


def prompt_request(text: str):
    """A :class:`PromptRequest` back from its string (as the batch job's rows carry it), or None for a sentence."""
    if not text.startswith("{"):
        return None
    try:
        fields = json.loads(text)
    except ValueError:
        return None
    if isinstance(fields, dict) and set(fields) <= set(PROMPT_FIELDS) and set(fields) & set(PROMPT_MARKERS):
        request = PromptRequest(fields)
        return request if request == text else None
    return None


def read_sentences(path, *, format: str | None = None, column: str | None = None) -> list[tuple[int, str]]:
    """``[(line, sentence), ...]`` from a text file (one sentence a line), a CSV or JSONL column, or ``"-"``
    (stdin, text unless ``format`` says otherwise). Blank sentences are left out; numbering keeps counting.

    ``column``: the CSV header name or JSONL key (default: ``sequence``, ``sentence`` or ``text``, whichever
    is there, or the only column); a JSONL line may also be a bare JSON string.
    """
    format = format or ("text" if str(path) == "-" else guess_format(path))
    if format not in ("text", "csv", "jsonl"):
        raise ValueError(f"format must be text, csv or jsonl; got {format!r}")
    try:
        with _open_text(path) as handle:
            if format == "text":
                rows = ((number, line.rstrip("\r\n")) for number, line in enumerate(handle, 1))
                return [(number, text) for number, text in rows if text.strip()]
            if format == "csv":
                return _read_csv(handle, path, column)
            return _read_jsonl(handle, path, column)
    except UnicodeDecodeError as error:
        raise ValueError(_not_utf8(path, error)) from None


def _not_utf8(path, error: UnicodeDecodeError) -> str:
    """Which file, where, and (for a UTF-16 byte-order mark) which encoding it looks like."""
    name = "standard input" if str(path) == "-" else str(path)
    head = bytes(error.object[:2]) if isinstance(error.object, (bytes, bytearray)) else b""
    guess = ""
    if head in (b"\xff\xfe", b"\xfe\xff"):
        guess = " It starts with a UTF-16 byte-order mark: convert it with iconv -f UTF-16 -t UTF-8."
    elif error.start > 0 or head:
        guess = " If it is Latin-1 or Windows-1252, convert it with iconv -f LATIN1 -t UTF-8."
    return (f"{name} is not UTF-8 text: byte {error.start} (0x{error.object[error.start]:02x}) starts no UTF-8 "
            f"character. The client reads UTF-8 input only.{guess}")


def _pick_column(names, column, where):
    if column is not None:
        if column not in names:
            raise ValueError(f"{where} has no column {column!r}; it has {', '.join(map(str, names))}")
        return column
    for name in DEFAULT_COLUMNS:
        if name in names:
            return name
    if len(names) == 1:
        return names[0]
    raise ValueError(f"{where} has columns {', '.join(map(str, names))}: say which holds the sentences "
                     "with --column")


def _read_csv(handle, path, column):
    dialect = csv.excel_tab if str(path).lower().endswith(".tsv") else csv.excel
    reader = csv.reader(handle, dialect)
    header = next(reader, None)
    if header is None:
        return []
    name = _pick_column(header, column, f"the CSV {path}")
    position = header.index(name)
    out = []
    for number, row in enumerate(reader, 1):
        value = row[position] if position < len(row) else ""
        if value.strip():
            out.append((number, value))
    return out


def _read_jsonl(handle, path, column):
    out = []
    for number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not JSON: {error}") from None
        if isinstance(item, str):
            value = item
        elif isinstance(item, dict) and column is None and set(item) & set(PROMPT_MARKERS):
            out.append((number, _prompt_line(item, path, number)))
            continue
        elif isinstance(item, dict):
            value = item.get(_pick_column(list(item), column, f"{path} line {number}"))
        else:
            raise ValueError(f"{path} line {number} is neither an object nor a string")
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"{path} line {number}: the sentence is not a string ({value!r})")
        if value.strip():
            out.append((number, value))
    return out


def _prompt_line(item: dict, path, number: int) -> PromptRequest:
    fields = {key: item[key] for key in PROMPT_FIELDS if key in item}
    if ("sequence" in fields) == ("messages" in fields):
        raise ValueError(f"{path} line {number}: a causal LM line needs \"sequence\" (the prompt) or \"messages\", "
                         "one of the two")
    for key in ("sequence", "target", "contrast"):
        if key in fields and not isinstance(fields[key], str):
            raise ValueError(f"{path} line {number}: {key} is not a string ({fields[key]!r})")
    if "messages" in fields and not isinstance(fields["messages"], list):
        raise ValueError(f"{path} line {number}: messages is not a list")
    return PromptRequest(fields)
