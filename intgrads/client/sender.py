"""Sending sentences to intgrads servers: :class:`Client` (one sentence, or a whole run with bounded
concurrency, retries with backoff and round-robin over servers) and the index fields of each answer.

In a run each answer arrives the cheapest way it can: from a server on this machine as the file it wrote
(renamed into the output); from a server on another machine, as a compact body, x and b instead of the
intermediates, which ``intgrads.answer.rebuild`` turns back into the whole answer before it is written (about
half the bytes on the network)."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from ..answer.keys import COMPACT_OUTPUTS, ENDPOINT_NAMES, HANDOFF_HEADER, HANDOFF_REQUEST, SUMMARY_HEADER
from .index import (INDEX_NAME, HandoffRefused, collect_handoff, is_done, lock_output, read_index, sentence_fields,
                    write_atomically, write_index)
from .inputs import read_key_file

OPTION_KEYS = ("target", "n_steps", "method", "baseline", "precision", "tolerance", "max_steps")
FATAL_STATUSES = (401, 403, 404)
# TorchServe refuses a missing or wrong key with 400 {"type": "InvalidKeyException", "message": TOKEN_REFUSED...}
TOKEN_REFUSED = "Token Authorization failed"
GZIP_MAGIC = b"\x1f\x8b"
TOKEN_ENV = "INTGRADS_TOKEN"
COMPACT_HEADER = "X-Intgrads-Compact"   # set by _post (not by a server) on a body asked for compact
# Which servers' bodies a run takes compact (x and b, rebuilt here): those on other machines (where the network
# and the server's encoding set the pace; on one machine rebuilding costs the client more than it saves), all, none.
REBUILD_CHOICES = ("remote", "always", "never")


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
        """No answer, or a 5xx other than 504: the server's own deadline, which the same request meets again."""
        return self.status is None or (self.status >= 500 and self.status != 504)

    @property
    def fatal(self) -> bool:
        """True when no other sentence can succeed either (bad key, wrong URL or model name)."""
        return self.status in FATAL_STATUSES or (self.status is not None and 400 <= self.status < 500
                                                 and TOKEN_REFUSED in str(self))


class RunAborted(ClientError):
    """The run stopped because the server refused in a way no sentence can get past."""


@dataclass
class RunReport:
    """What :meth:`Client.run` did."""

    output: Path
    total: int = 0          # sentences in the input
    answered: int = 0       # answered in this run
    skipped: int = 0        # already answered by an earlier run
    failed: int = 0         # failed in this run (recorded in the index with their error)
    warned: int = 0         # answered in this run with warnings (recorded in the index)
    seconds: float = 0.0
    errors: dict = field(default_factory=dict)   # line -> error message, for this run's failures

    @property
    def index(self) -> Path:
        return self.output / INDEX_NAME


def _request_options(target=None, n_steps=None, method=None, baseline=None, precision=None, tolerance=None,
                     max_steps=None) -> dict:
    """The options the caller set (None: the server's default), in OPTION_KEYS order. ``n_steps`` may be "auto",
    with ``tolerance`` and ``max_steps``."""
    given = dict(zip(OPTION_KEYS, (target, n_steps, method, baseline, precision, tolerance, max_steps)))
    return {name: value for name, value in given.items() if value is not None}


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
                 max_backoff: float = 60.0, timeout: float = 300.0, handoff: bool = True, rebuild: str = "remote"):
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
        self._no_handoff: set = set()
        self.handoff_fallbacks: list = []   # why a server's answer files could not be taken (then: bodies)
        self.handoff = handoff   # ask a server on this machine for answer files
        if rebuild not in REBUILD_CHOICES:
            raise ValueError(f"rebuild must be one of {', '.join(REBUILD_CHOICES)}; got {rebuild!r}")
        self.rebuild = rebuild   # in a run, which servers' bodies come compact (x and b), rebuilt here
        self._no_compact: set = set()   # servers that refused compact answers (an older intgrads)
        self.rebuilt = 0   # answers taken compact and rebuilt here

    # -- one sentence ---------------------------------------------------------------------------------------

    def fetch(self, sentence: str, *, target=None, n_steps=None, method=None, baseline=None, precision=None,
              tolerance=None, max_steps=None) -> bytes:
        """The server's gzip answer for ``sentence``: the bytes it sent (decode with ``intgrads.decode_answer``)."""
        options = _request_options(target, n_steps, method, baseline, precision, tolerance, max_steps)
        return self._post(sentence, options, binary=True)[0]

    def attribute(self, sentence: str, **options) -> dict:
        """The answer dict for ``sentence`` (see docs/engine-api.md), decoded with ``weights_only=True``; the options
        are :meth:`fetch`'s."""
        from ..answer.codec import decode_answer

        return decode_answer(self.fetch(sentence, **options))

    def summary(self, sentence: str, *, target=None, n_steps=None, method=None, baseline=None, precision=None,
                tolerance=None, max_steps=None) -> dict:
        """The server's JSON summary for ``sentence`` (``Accept: application/json``)."""
        options = _request_options(target, n_steps, method, baseline, precision, tolerance, max_steps)
        return json.loads(_gunzip_if_needed(self._post(sentence, options, binary=False)[0]))

    # -- many sentences -------------------------------------------------------------------------------------

    def run(self, sentences: Iterable, output, *, target=None, n_steps=None, method=None, baseline=None,
            precision=None, tolerance=None, max_steps=None, concurrency: int = 4, progress: bool = True) -> RunReport:
        """Send ``sentences`` (strings, numbered from 1, or ``(line, sentence)`` pairs) with ``concurrency``
        requests in flight, writing the answers and ``index.jsonl`` into ``output``; see the module docstring.
        Raises :class:`RunAborted` on 401/403/404 or a refused key (after recording what was done)."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1; got {concurrency}")
        items = _numbered(sentences)
        options = _request_options(target, n_steps, method, baseline, precision, tolerance, max_steps)
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        lock = lock_output(output)
        try:
            for leftover in output.glob("*.tmp"):
                leftover.unlink(missing_ok=True)
            index = output / INDEX_NAME
            records = read_index(index)
            todo = [(line, text) for line, text in items if not is_done(records.get(line), text, options, output)]
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
                    report.warned += bool(record.get("warnings"))
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
            record = {"line": line, **sentence_fields(sentence)}
            try:
                name = f"{line:06d}.gzip"
                fields, url, attempts = self._answer_into(output / name, sentence, options, stop)
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

    def _answer_into(self, path: Path, sentence: str, options: dict, stop) -> tuple[dict, str, int]:
        """Get one answer into ``path`` and its index fields: from a server on this machine, the file it wrote
        (renamed here, no copy); else, or when that file cannot be taken, the body. Returns (fields, url, tries)."""
        body, url, attempts, headers = self._post(sentence, options, binary=True, stop=stop, handoff=True,
                                                  compact=True)
        handed = headers.get(HANDOFF_HEADER)
        if handed:
            try:
                collect_handoff(handed, path)
                body = None
            except (OSError, HandoffRefused) as error:
                with self._url_lock:
                    self._no_handoff.add(url)   # this server's files are out of reach: bodies from now on
                self.handoff_fallbacks.append(f"{url}: {error}")
                body, url, more, headers = self._post(sentence, options, binary=True, stop=stop, handoff=False,
                                                      compact=True)
                attempts += more
        if body is not None and headers.get(COMPACT_HEADER):
            body = _rebuilt(body)
            with self._url_lock:
                self.rebuilt += 1
        if body is not None:
            write_atomically(path, body)
        try:
            fields = fields_from_header(headers.get(SUMMARY_HEADER)) or _answer_fields(
                body if body is not None else path.read_bytes())
        except ClientError as error:
            path.unlink(missing_ok=True)
            error.url, error.attempts = url, attempts
            raise
        return fields, url, attempts

    # -- HTTP -----------------------------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _may_handoff(self, url: str) -> bool:
        """Ask for the answer as a file only from a server on this machine (a loopback URL) whose files we have
        not failed to take."""
        with self._url_lock:
            refused = url in self._no_handoff
        return self.handoff and not refused and _on_this_machine(url)

    def _pick_url(self) -> str:
        with self._url_lock:
            return self.urls[next(self._next_url)]

    def _asked(self, url, headers, payload, *, handoff: bool, compact: bool) -> tuple[dict, dict]:
        """The headers and body of one try at ``url``: a hand-off from a server on this machine, else (``compact``,
        and ``rebuild`` says so for this server) x and b instead of the intermediates, unless it can't send them."""
        if handoff and self._may_handoff(url):
            return {**headers, HANDOFF_HEADER: HANDOFF_REQUEST}, payload
        wanted = self.rebuild == "always" or (self.rebuild == "remote" and not _on_this_machine(url))
        with self._url_lock:
            compact = compact and wanted and url not in self._no_compact
        return dict(headers), ({**payload, "outputs": list(COMPACT_OUTPUTS)} if compact else payload)

    def _post(self, sentence, options, *, binary: bool, stop: threading.Event | None = None, handoff: bool = False,
              compact: bool = False):
        """POST once per try until an answer; returns ``(body, url, attempts, headers)`` or raises
        :class:`ClientError`. ``handoff``: ask a server on this machine for the answer as a file; ``compact``:
        otherwise ask for x and b instead of the intermediates (the headers then hold COMPACT_HEADER)."""
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
            asked, sent = self._asked(url, headers, payload, handoff=handoff and binary, compact=compact and binary)
            try:
                response = self._session().post(url, json=sent, headers=asked, stream=True,
                                                timeout=(min(10.0, self.timeout), self.timeout))
                with response:
                    body = response.raw.read(decode_content=False)
                status = response.status_code
                if status == 200:
                    if binary and body[:2] != GZIP_MAGIC and not response.headers.get(HANDOFF_HEADER):
                        raise ClientError(f"the server at {url} answered 200 but not with a gzip answer "
                                          f"({response.headers.get('Content-Type', 'no content type')})",
                                          status=status, url=url, attempts=attempt)
                    return body, url, attempt, _marked(response.headers, compact=sent is not payload)
                if status == 400 and sent is not payload and ENDPOINT_NAMES[0] in _error_text(body):
                    with self._url_lock:   # a server that can't send x and b: whole answers from it
                        self._no_compact.add(url)
                    attempt -= 1
                    continue
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


def fields_from_header(value: str | None) -> dict | None:
    """The index fields a server sent in X-Intgrads-Summary (None when it sent none or garbage)."""
    if not value:
        return None
    try:
        fields = json.loads(value)
    except ValueError:
        return None
    return fields if isinstance(fields, dict) and "predicted" in fields else None


def _answer_fields(body: bytes) -> dict:
    """The index fields of one answer, decoded from its bytes (a server that sends no X-Intgrads-Summary)."""
    from ..answer.codec import decode_answer
    from ..answer.summary import index_record, summarize_answer

    try:
        answer = decode_answer(body)
    except Exception as error:  # noqa: BLE001
        raise ClientError(f"the server's answer does not decode: {type(error).__name__}: {error}") from None
    if isinstance(answer, list) and len(answer) == 1:
        answer = answer[0]
    if not isinstance(answer, dict) or "logits" not in answer:
        raise ClientError("the server's answer is not an intgrads answer dict")
    return index_record(summarize_answer(answer))


def _on_this_machine(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _marked(headers, *, compact: bool):
    """The response headers, with COMPACT_HEADER added when the body was asked for compact."""
    if not compact:
        return headers
    marked = CaseInsensitiveDict(headers)
    marked[COMPACT_HEADER] = "1"
    return marked


def _rebuilt(body: bytes) -> bytes:
    """A compact answer (x and b) turned back into the whole one the server would have sent."""
    from ..answer.codec import decode_answer, encode_answer
    from ..answer.rebuild import rebuild_intermediates

    try:
        return encode_answer(rebuild_intermediates(decode_answer(body)))
    except Exception as error:  # noqa: BLE001
        raise ClientError(f"the server's compact answer does not rebuild: {type(error).__name__}: {error}") from None


def _progress_bar(total, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=" sentences", unit_scale=False, dynamic_ncols=True, smoothing=0.05,
                desc="intgrads")
