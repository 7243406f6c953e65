"""Batch client for the intgrads server: many sentences in, one answer file per sentence out.

Command line (console script ``intgrads-client``, or ``python -m intgrads.client``)::

    intgrads-client sentences.txt --url http://127.0.0.1:8080/predictions/bert -o answers/
    intgrads-client reviews.csv --column text --url URL1 --url URL2 -j 8 --n-steps 100 -o answers/
    cat sentences.txt | intgrads-client - --url URL -o answers/ --key-file key_file.json
    intgrads-client render answers/000042.gzip -o 000042.png      # or .html

Python::

    from intgrads.client import Client
    client = Client("http://127.0.0.1:8080/predictions/bert", key_file="key_file.json")
    answer = client.attribute("a fine film", target=1, n_steps=50)     # the answer dict
    report = client.run(["a fine film", "a dull one"], "answers/", concurrency=4)

The output directory holds ``NNNNNN.gzip`` (the exact bytes the server sent for the sentence on line
NNNNNN, readable with :func:`intgrads.load_answer`) and ``index.jsonl``: one JSON object per sentence with
``line``, ``sentence``, ``file``, ``predicted``, ``label``, ``probability``, ``target``, ``n_steps``,
``method``, ``baseline``, ``convergence_delta``, ``seconds``, ``attempts``, ``url`` and ``options`` (what was
asked for) -- or, for a sentence that failed, ``file: null`` with ``error`` and ``status``.

Line numbers are 1-based lines of a text or JSONL file, and data rows (after the header) of a CSV file.
A rerun skips every sentence whose index record has no error, the same sentence and options, and its file
present; the others are sent again. Answer files are written to ``*.tmp`` and renamed, so an interrupted
run (Ctrl-C) leaves no half-written answer. 5xx answers and connection errors are retried with exponential
backoff (moving to the next URL); 4xx answers are not retried: the sentence is recorded as failed and the
run goes on -- except 401, 403, 404 and TorchServe's 400 "Token Authorization failed", which no sentence
can get past (wrong key, wrong URL or model name), and which stop the run. While a run writes into a
directory it holds ``.intgrads-client.lock`` there (host and pid; a lock left by a dead client on the same
host is taken over), so two runs cannot mix.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import itertools
import json
import os
import queue
import random
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import requests
import urllib3

from .launcher import pid_alive

INDEX_NAME = "index.jsonl"
OPTION_KEYS = ("target", "n_steps", "method", "baseline")
FATAL_STATUSES = (401, 403, 404)
# TorchServe refuses a missing or wrong key with 400 {"type": "InvalidKeyException", "message": TOKEN_REFUSED...}
TOKEN_REFUSED = "Token Authorization failed"
GZIP_MAGIC = b"\x1f\x8b"
TOKEN_ENV = "INTGRADS_TOKEN"


class ClientError(Exception):
    """A request that did not give an answer; ``status`` is the HTTP status (None: no HTTP answer)."""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None, attempts: int = 1,
                 interrupted: bool = False):
        super().__init__(message)
        self.status = status
        self.url = url
        self.attempts = attempts
        self.interrupted = interrupted   # the run was stopping: not the sentence's failure

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500

    @property
    def fatal(self) -> bool:
        """True when no other sentence can succeed either (bad key, wrong URL or model name)."""
        return self.status in FATAL_STATUSES or (self.status is not None and 400 <= self.status < 500
                                                 and TOKEN_REFUSED in str(self))


class RunAborted(ClientError):
    """The run stopped because the server refused in a way no sentence can get past."""


class OutputBusy(RuntimeError):
    """Another client is writing into the same output directory."""


@dataclass
class RunReport:
    """What :meth:`Client.run` did."""

    output: Path
    total: int = 0          # sentences in the input
    answered: int = 0       # answered in this run
    skipped: int = 0        # already answered by an earlier run
    failed: int = 0         # failed in this run (recorded in the index with their error)
    seconds: float = 0.0
    errors: dict = field(default_factory=dict)   # line -> error message, for this run's failures

    @property
    def index(self) -> Path:
        return self.output / INDEX_NAME


# --------------------------------------------------------------------------------------------- auth

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


# --------------------------------------------------------------------------------------------- input

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


def read_sentences(path, *, format: str | None = None, column: str | None = None) -> list[tuple[int, str]]:
    """``[(line, sentence), ...]`` from a text file (one sentence a line), a CSV or JSONL column, or ``"-"``
    (stdin, text unless ``format`` says otherwise). Blank sentences are left out; numbering keeps counting.

    ``column``: the CSV header name or JSONL key (default: ``sequence``, ``sentence`` or ``text``, whichever
    is there, or the only column); a JSONL line may also be a bare JSON string.
    """
    format = format or ("text" if str(path) == "-" else guess_format(path))
    if format not in ("text", "csv", "jsonl"):
        raise ValueError(f"format must be text, csv or jsonl; got {format!r}")
    with _open_text(path) as handle:
        if format == "text":
            rows = ((number, line.rstrip("\r\n")) for number, line in enumerate(handle, 1))
            return [(number, text) for number, text in rows if text.strip()]
        if format == "csv":
            return _read_csv(handle, path, column)
        return _read_jsonl(handle, path, column)


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


# --------------------------------------------------------------------------------------------- client

def _request_options(target=None, n_steps=None, method=None, baseline=None) -> dict:
    options = {}
    if target is not None:
        options["target"] = target
    if n_steps is not None:
        options["n_steps"] = n_steps
    if method is not None:
        options["method"] = method
    if baseline is not None:
        options["baseline"] = baseline
    return options


def _error_text(body: bytes) -> str:
    if body[:2] == GZIP_MAGIC:
        try:
            body = gzip.decompress(body)
        except OSError:
            pass
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return text[:500]
    if isinstance(parsed, dict):
        for key in ("error", "message", "detail"):
            if key in parsed:
                return str(parsed[key])
    return text[:500]


class Client:
    """Talks to one or several intgrads servers (round-robin).

    ``urls``: a predictions URL (``http://host:8080/predictions/<model>``) or a list of them.
    ``token`` / ``key_file``: the inference key (``Authorization: Bearer``), given or read from TorchServe's
    ``key_file.json``; without either, the ``INTGRADS_TOKEN`` environment variable is used if set.
    ``retries``: extra tries after a 5xx answer or a connection error, waiting ``backoff * 2**k`` seconds
    (at most ``max_backoff``, with jitter; a ``Retry-After`` header is honoured); 4xx answers are never retried.
    ``timeout``: seconds to wait for an answer (connecting: at most 10).
    """

    def __init__(self, urls, *, token: str | None = None, key_file=None, retries: int = 5, backoff: float = 1.0,
                 max_backoff: float = 60.0, timeout: float = 300.0):
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("give at least one server URL")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"server URL must start with http:// or https://; got {url!r}")
        if token and key_file:
            raise ValueError("give the token or the key file, not both")
        if key_file:
            token = read_key_file(key_file)
        self.token = token or os.environ.get(TOKEN_ENV) or None
        if retries < 0:
            raise ValueError(f"retries must be 0 or more; got {retries}")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self._next_url = itertools.cycle(range(len(self.urls)))
        self._url_lock = threading.Lock()
        self._local = threading.local()

    # -- one sentence ---------------------------------------------------------------------------------------

    def fetch(self, sentence: str, *, target=None, n_steps=None, method=None, baseline=None) -> bytes:
        """The server's gzip answer for ``sentence``: the bytes it sent (decode with ``intgrads.decode_answer``)."""
        body, _, _ = self._post(sentence, _request_options(target, n_steps, method, baseline), binary=True)
        return body

    def attribute(self, sentence: str, *, target=None, n_steps=None, method=None, baseline=None) -> dict:
        """The answer dict for ``sentence`` (see docs/engine-api.md), decoded with ``weights_only=True``."""
        from .codec import decode_answer

        return decode_answer(self.fetch(sentence, target=target, n_steps=n_steps, method=method, baseline=baseline))

    def summary(self, sentence: str, *, target=None, n_steps=None, method=None, baseline=None) -> dict:
        """The server's JSON summary for ``sentence`` (``Accept: application/json``)."""
        body, _, _ = self._post(sentence, _request_options(target, n_steps, method, baseline), binary=False)
        return json.loads(_gunzip_if_needed(body))

    # -- many sentences -------------------------------------------------------------------------------------

    def run(self, sentences: Iterable, output, *, target=None, n_steps=None, method=None, baseline=None,
            concurrency: int = 4, progress: bool = True) -> RunReport:
        """Send ``sentences`` (strings, numbered from 1, or ``(line, sentence)`` pairs) with ``concurrency``
        requests in flight, writing the answers and ``index.jsonl`` into ``output``; see the module docstring.
        Raises :class:`RunAborted` on 401/403/404 or a refused key (after recording what was done)."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1; got {concurrency}")
        items = _numbered(sentences)
        options = _request_options(target, n_steps, method, baseline)
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        lock = _lock_output(output)
        try:
            for leftover in output.glob("*.tmp"):
                leftover.unlink(missing_ok=True)
            index = output / INDEX_NAME
            records = read_index(index)
            todo = [(line, text) for line, text in items if not _is_done(records.get(line), text, options, output)]
            report = RunReport(output=output, total=len(items), skipped=len(items) - len(todo))
            start = time.monotonic()
            try:
                if todo:
                    self._run_todo(todo, options, output, records, report, concurrency, progress)
            finally:
                report.seconds = time.monotonic() - start
                write_index(index, records)
        finally:
            lock.unlink(missing_ok=True)
        return report

    def _run_todo(self, todo, options, output, records, report, concurrency, progress):
        tasks: queue.Queue = queue.Queue()
        results: queue.Queue = queue.Queue()
        for item in todo:
            tasks.put(item)
        stop = threading.Event()
        workers = [threading.Thread(target=self._worker, args=(tasks, results, stop, options, output),
                                    name=f"intgrads-client-{i}", daemon=True)
                   for i in range(min(concurrency, len(todo)))]
        bar = _progress_bar(len(todo), progress)
        abort = None
        index_handle = open(output / INDEX_NAME, "a", encoding="utf-8")
        try:
            for worker in workers:
                worker.start()
            pending = len(todo)
            while pending:
                try:
                    record, error = results.get(timeout=0.2)
                except queue.Empty:
                    if not any(worker.is_alive() for worker in workers):
                        break
                    continue
                pending -= 1
                if error is not None and (error.fatal or error.interrupted):
                    if error.fatal:
                        abort = abort or error
                        stop.set()
                    continue    # not the sentence's fault: leave it unrecorded, to be sent again
                records[record["line"]] = record
                index_handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                index_handle.flush()
                if error is None:
                    report.answered += 1
                else:
                    report.failed += 1
                    report.errors[record["line"]] = record["error"]
                if bar is not None:
                    bar.update(1)
                    if report.failed:
                        bar.set_postfix(failed=report.failed, refresh=False)
        finally:
            stop.set()
            index_handle.close()
            if bar is not None:
                bar.close()
        if abort is not None:
            raise RunAborted(f"stopped: {abort} (from {abort.url}); no sentence can succeed like this",
                             status=abort.status, url=abort.url, attempts=abort.attempts)

    def _worker(self, tasks, results, stop, options, output):
        while not stop.is_set():
            try:
                line, sentence = tasks.get_nowait()
            except queue.Empty:
                return
            started = time.monotonic()
            record = {"line": line, "sentence": sentence}
            try:
                body, url, attempts = self._post(sentence, options, binary=True, stop=stop)
                try:
                    fields = _answer_fields(body)
                except ClientError as error:
                    error.url, error.attempts = url, attempts
                    raise
                name = f"{line:06d}.gzip"
                _write_atomically(output / name, body)
                record.update(file=name, **fields, seconds=round(time.monotonic() - started, 4), attempts=attempts,
                              url=url, options=options)
                results.put((record, None))
            except ClientError as error:
                record.update(file=None, error=str(error), status=error.status,
                              seconds=round(time.monotonic() - started, 4), attempts=error.attempts, url=error.url,
                              options=options)
                results.put((record, error))
            except Exception as error:  # noqa: BLE001 - a bug on one sentence must not hang the run
                record.update(file=None, error=f"{type(error).__name__}: {error}", status=None,
                              seconds=round(time.monotonic() - started, 4), attempts=1, url=None, options=options)
                results.put((record, ClientError(str(error))))

    # -- HTTP -----------------------------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _pick_url(self) -> str:
        with self._url_lock:
            return self.urls[next(self._next_url)]

    def _post(self, sentence, options, *, binary: bool, stop: threading.Event | None = None):
        """POST once per try until an answer; returns ``(body, url, attempts)`` or raises :class:`ClientError`."""
        payload = {"sequence": sentence, **options}
        headers = {"Content-Type": "application/json",
                   "Accept": "application/gzip" if binary else "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        attempt = 0
        while True:
            attempt += 1
            url = self._pick_url()
            retry_after = None
            try:
                response = self._session().post(url, json=payload, headers=headers, stream=True,
                                                timeout=(min(10.0, self.timeout), self.timeout))
                with response:
                    body = response.raw.read(decode_content=False)
                status = response.status_code
                if status == 200:
                    if binary and body[:2] != GZIP_MAGIC:
                        raise ClientError(f"the server at {url} answered 200 but not with a gzip answer "
                                          f"({response.headers.get('Content-Type', 'no content type')})",
                                          status=status, url=url, attempts=attempt)
                    return body, url, attempt
                error = ClientError(f"HTTP {status}: {_error_text(body)}", status=status, url=url, attempts=attempt)
                retry_after = _retry_after(response.headers.get("Retry-After"))
            except ClientError:
                raise
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError) as exc:
                error = ClientError(f"{type(exc).__name__}: {_short(exc)}", status=None, url=url, attempts=attempt)
            except (OSError, urllib3.exceptions.HTTPError) as exc:  # the connection dropped while reading the body
                error = ClientError(f"{type(exc).__name__}: {_short(exc)}", status=None, url=url, attempts=attempt)
            if not error.retryable or attempt > self.retries:
                if error.retryable and attempt > 1:
                    error.args = (f"{error.args[0]} (gave up after {attempt} tries)",)
                raise error
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = max(delay, min(self.max_backoff, retry_after))
            if stop is not None:
                if stop.wait(delay):
                    raise ClientError("interrupted", status=None, url=url, attempts=attempt, interrupted=True)
            else:
                time.sleep(delay)


def _short(exc) -> str:
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."


def _retry_after(value) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _gunzip_if_needed(body: bytes) -> bytes:
    return gzip.decompress(body) if body[:2] == GZIP_MAGIC else body


def _numbered(sentences) -> list[tuple[int, str]]:
    items = []
    for position, item in enumerate(sentences, 1):
        if isinstance(item, str):
            items.append((position, item))
        else:
            line, text = item
            items.append((int(line), text))
    lines = [line for line, _ in items]
    if len(set(lines)) != len(lines):
        raise ValueError("two sentences have the same line number")
    return items


def _answer_fields(body: bytes) -> dict:
    """The index fields of one answer: predicted class, its probability, target, settings, delta."""
    from .codec import decode_answer, summarize_answer

    try:
        answer = decode_answer(body)
    except Exception as error:  # noqa: BLE001
        raise ClientError(f"the server's answer does not decode: {type(error).__name__}: {error}") from None
    if isinstance(answer, list) and len(answer) == 1:
        answer = answer[0]
    if not isinstance(answer, dict) or "logits" not in answer:
        raise ClientError("the server's answer is not an intgrads answer dict")
    summary = summarize_answer(answer)
    predicted = summary["predicted"]
    return {
        "predicted": predicted,
        "label": summary["label"],
        "probability": round(summary["probabilities"][predicted], 6),
        "target": summary.get("target"),
        "n_steps": summary.get("n_steps"),
        "method": summary.get("method"),
        "baseline": summary.get("baseline"),
        "convergence_delta": summary.get("convergence_delta"),
    }


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------- index

LOCK_NAME = ".intgrads-client.lock"


def _lock_output(output: Path) -> Path:
    """Create ``output/.intgrads-client.lock`` (host and pid), taking over a stale one left on this host."""
    path = output / LOCK_NAME
    mine = json.dumps({"host": socket.gethostname(), "pid": os.getpid()})
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text(encoding="utf-8"))
                host, pid = str(holder["host"]), int(holder["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                host, pid = "?", -1
            if host == socket.gethostname() and not pid_alive(pid):
                path.unlink(missing_ok=True)   # its client is gone
                continue
            raise OutputBusy(f"another intgrads-client (pid {pid} on {host}) is writing into {output}; "
                             f"if it is no longer running, delete {path}") from None
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(mine)
        return path
    raise OutputBusy(f"cannot lock {output}: delete {path}")


def read_index(path) -> dict[int, dict]:
    """The index's records by line number (the last record of a line wins; a torn last line is ignored)."""
    records: dict[int, dict] = {}
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        return records
    with handle:
        for text in handle:
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("line"), int):
                records[record["line"]] = record
    return records


def write_index(path, records: dict[int, dict]) -> None:
    """Rewrite the index with one record per line number, in order (temp file, then rename)."""
    path = Path(path)
    if not records and not path.exists():
        return
    text = "".join(json.dumps(records[line], ensure_ascii=False) + "\n" for line in sorted(records))
    _write_atomically(path, text.encode("utf-8"))


def _is_done(record, sentence, options, output) -> bool:
    return bool(record and not record.get("error") and record.get("file") and record.get("sentence") == sentence
                and (record.get("options") or {}) == options and (output / record["file"]).is_file())


def _progress_bar(total, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=" sentences", unit_scale=False, dynamic_ncols=True, smoothing=0.05,
                desc="intgrads")


# --------------------------------------------------------------------------------------------- CLI

def _target(value: str):
    if value == "predicted":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"target must be an integer class or 'predicted'; got {value!r}") from None


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value!r}")
    return number


def _send_parser() -> argparse.ArgumentParser:
    from .baselines import BASELINES
    from .quadrature import METHODS

    parser = argparse.ArgumentParser(
        prog="intgrads-client",
        description="Send sentences to intgrads servers; write one answer file per sentence and index.jsonl. "
                    "(`intgrads-client render ANSWER.gzip -o out.png|out.html` draws an answer.)")
    parser.add_argument("input", nargs="?", default="-",
                        help="text file (one sentence a line), .csv/.tsv or .jsonl file, or - for stdin (default)")
    parser.add_argument("-o", "--output", required=True, help="directory for the answers and index.jsonl")
    parser.add_argument("-u", "--url", action="append", required=True, metavar="URL",
                        help="predictions URL, e.g. http://127.0.0.1:8080/predictions/bert (repeat, or separate "
                             "with commas, for several servers: requests go round-robin)")
    parser.add_argument("--format", choices=("text", "csv", "jsonl"),
                        help="input format (default: from the file name; stdin: text)")
    parser.add_argument("--column", help="CSV column or JSONL key holding the sentence "
                                         "(default: sequence, sentence or text)")
    parser.add_argument("--target", type=_target, help="class whose logit is attributed, or 'predicted'")
    parser.add_argument("--n-steps", type=_positive_int, help="quadrature steps")
    parser.add_argument("--method", choices=METHODS, help="quadrature rule")
    parser.add_argument("--baseline", choices=BASELINES, help="baseline")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--token", help=f"inference key (default: ${TOKEN_ENV} if set)")
    auth.add_argument("--key-file", help="TorchServe's key_file.json: its inference key is used")
    parser.add_argument("-j", "--concurrency", type=_positive_int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--retries", type=int, default=5, help="tries after a 5xx or connection error (default 5)")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds, doubled each "
                                                                    "time (default 1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one answer (default 300)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _render_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intgrads-client render",
                                     description="Draw an answer: token heatmap and accumulated attribution along "
                                                 "the path, as a PNG or a self-contained HTML page.")
    parser.add_argument("answer", help="answer file (.gzip) saved from the server")
    parser.add_argument("-o", "--output", help="out.png or out.html (default: the answer's name with .png)")
    parser.add_argument("--top", type=int, default=8, help="tokens named in the path panel's legend (default 8)")
    return parser


def main(argv=None) -> int:
    """Console entry point; returns the exit status (0 all answered, 1 some failed, 2 usage, 130 Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "render":
        return _main_render(argv[1:])
    if argv and argv[0] == "send":
        argv = argv[1:]
    return _main_send(argv)


def _main_render(argv) -> int:
    args = _render_parser().parse_args(argv)
    from .codec import load_answer
    from .render import render_answer

    output = args.output or str(Path(args.answer).with_suffix(".png"))
    try:
        answer = load_answer(args.answer)
        render_answer(answer, output, top=args.top)
    except (OSError, ValueError, KeyError) as error:
        print(f"intgrads-client render: {error}", file=sys.stderr)
        return 2
    print(output)
    return 0


def _main_send(argv) -> int:
    parser = _send_parser()
    args = parser.parse_args(argv)
    urls = [url.strip() for value in args.url for url in value.split(",") if url.strip()]
    try:
        client = Client(urls, token=args.token, key_file=args.key_file, retries=args.retries, backoff=args.backoff,
                        timeout=args.timeout)
        sentences = read_sentences(args.input, format=args.format, column=args.column)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if not sentences:
        print("intgrads-client: no sentences in the input", file=sys.stderr)
        return 0
    try:
        report = client.run(sentences, args.output, target=args.target, n_steps=args.n_steps, method=args.method,
                            baseline=args.baseline, concurrency=args.concurrency, progress=not args.no_progress)
    except RunAborted as error:
        print(f"intgrads-client: {error}", file=sys.stderr)
        return 1
    except OutputBusy as error:
        print(f"intgrads-client: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nintgrads-client: interrupted; what was answered is in {Path(args.output) / INDEX_NAME}; "
              "run the same command again to go on", file=sys.stderr)
        return 130
    print(f"intgrads-client: {report.answered} answered, {report.skipped} already there, {report.failed} failed "
          f"in {report.seconds:.1f} s; index: {report.index}", file=sys.stderr)
    for line, error in sorted(report.errors.items())[:5]:
        print(f"  line {line}: {error}", file=sys.stderr)
    if len(report.errors) > 5:
        print(f"  ... {len(report.errors) - 5} more in the index", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
