"""Sending sentences to intgrads servers: :class:`Client` (one sentence, or a whole run with bounded
concurrency, retries with backoff and round-robin over servers) and the index fields of each answer.

In a run each answer arrives the cheapest way it can: from a server on this machine as the file it wrote
(renamed into the output); from a server on another machine, as a compact body, x and b instead of the
intermediates, which ``intgrads.answer.rebuild`` turns back into the whole answer before it is written (about
half the bytes on the network). Senders keep the requests in flight while checkers check, write and index what
they fetched, so a server's workers do not wait on the client's checks; a body is inflated as it arrives.

Nothing a server sends is trusted (``intake``, ``handoff``): a body is read up to a size the client chose, every
answer is decoded with a bound and checked whole and consistent before it is written or rebuilt, its settings
must be the options asked for, its index fields are read from the answer itself (a summary header can only
confirm them), and a file is taken over only when the client asked for one and it is provably the answer."""

from __future__ import annotations

import itertools
import json
import os
import queue
import random
import threading
import time
from pathlib import Path
from typing import Iterable

import requests
import urllib3

from ..answer.checks import MAX_REBUILD_STEPS, AnswerInvalid, to_torch
from ..answer.stream import StreamedAnswer
from ..answer.keys import COMPACT_OUTPUTS, ENDPOINT_NAMES, HANDOFF_HEADER, HANDOFF_REQUEST, SUMMARY_HEADER
from .errors import START_HINT, ClientError, RunAborted, no_connection
from .handoff import HandoffRefused, HandoffTaker, on_this_machine
from .index import open_output, sentence_fields, write_atomically
from .inputs import read_key_file
from .report import RunReport, advance, progress_bar
from .intake import (DEFAULT_MAX_ANSWER_BYTES, MAX_SMALL_BODY, AnswerRefused, Reply, check_asked, error_text, gunzip_if_needed,
                     index_fields, pointer_of, read_capped, rebuilt, retry_after, short)

OPTION_KEYS = ("target", "n_steps", "method", "baseline", "precision", "tolerance", "max_steps")
ANSWER_KEYS = ("dtype", "outputs")   # how the answer is sent: its float tensors' dtype, the keys it keeps
GZIP_MAGIC = b"\x1f\x8b"
TOKEN_ENV = "INTGRADS_TOKEN"
HANDOFF_PAUSE_SECONDS = 30.0   # after a 507 (its hand-off directory full), a server's answers come as bodies a while
# Which servers' bodies a run takes compact (x and b, rebuilt here): those on other machines (where the network
# and the server's encoding set the pace; on one machine rebuilding costs the client more than it saves), all, none.
REBUILD_CHOICES = ("remote", "always", "never")


def _request_options(target=None, n_steps=None, method=None, baseline=None, precision=None, tolerance=None,
                     max_steps=None, dtype=None, outputs=None) -> dict:
    """The options the caller set (None: the server's default), in OPTION_KEYS then ANSWER_KEYS order. ``n_steps``
    may be "auto", with ``tolerance`` and ``max_steps``; ``dtype`` and ``outputs`` (a list of answer keys) shape the
    answer as the batch job's flags do."""
    given = dict(zip(OPTION_KEYS + ANSWER_KEYS, (target, n_steps, method, baseline, precision, tolerance, max_steps,
                                                 dtype, list(outputs) if outputs is not None else None)))
    return {name: value for name, value in given.items() if value is not None}


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
                 max_backoff: float = 60.0, timeout: float = 300.0, handoff: bool = True, rebuild: str = "remote",
                 max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES):
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
        self._proven: set = set()         # servers whose answer files were taken (checked beside the next request)
        self._handoff_paused: dict = {}   # url -> time.monotonic() until which it is not asked for files
        self._taker = HandoffTaker()
        if max_answer_bytes < 1:
            raise ValueError(f"max_answer_bytes must be positive; got {max_answer_bytes}")
        self.max_answer_bytes = max_answer_bytes
        self.handoff_fallbacks: list = []   # why a server's answer files could not be taken (then: bodies)
        self.handoff = handoff   # ask a server on this machine for answer files
        if rebuild not in REBUILD_CHOICES:
            raise ValueError(f"rebuild must be one of {', '.join(REBUILD_CHOICES)}; got {rebuild!r}")
        self.rebuild = rebuild   # in a run, which servers' bodies come compact (x and b), rebuilt here
        self._no_compact: set = set()   # servers that refused compact answers (an older intgrads)
        self.rebuilt = 0   # answers taken compact and rebuilt here
        self._answered = False          # some URL gave an HTTP answer (then a refused connection is retried)
        self._unreachable: dict = {}    # url -> why no connection was made, while none has answered

    # -- one sentence ---------------------------------------------------------------------------------------

    def fetch(self, sentence: str, *, target=None, n_steps=None, method=None, baseline=None, precision=None,
              tolerance=None, max_steps=None, dtype=None, outputs=None) -> bytes:
        """The server's gzip answer for ``sentence``: the bytes it sent (decode with ``intgrads.decode_answer``)."""
        options = _request_options(target, n_steps, method, baseline, precision, tolerance, max_steps, dtype, outputs)
        return self._post(sentence, options, binary=True).body

    def attribute(self, sentence: str, **options) -> dict:
        """The answer dict for ``sentence`` (see docs/engine-api.md), read with the allow-list reader, checked and
        given as torch tensors; the options are :meth:`fetch`'s."""
        return to_torch(self._post(sentence, _request_options(**options), binary=True).answer)

    def summary(self, sentence: str, *, target=None, n_steps=None, method=None, baseline=None, precision=None,
                tolerance=None, max_steps=None) -> dict:
        """The server's JSON summary for ``sentence`` (``Accept: application/json``)."""
        options = _request_options(target, n_steps, method, baseline, precision, tolerance, max_steps)
        return json.loads(gunzip_if_needed(self._post(sentence, options, binary=False).body))

    # -- many sentences -------------------------------------------------------------------------------------

    def run(self, sentences: Iterable, output, *, target=None, n_steps=None, method=None, baseline=None,
            precision=None, tolerance=None, max_steps=None, dtype=None, outputs=None, concurrency: int = 4,
            progress: bool = True,
            overwrite: bool = False) -> RunReport:
        """Send ``sentences`` (strings, numbered from 1, or ``(line, sentence)`` pairs) with ``concurrency``
        requests in flight, writing the answers and ``index.jsonl`` into ``output``; see the module docstring.
        Raises :class:`RunAborted` on 401/403/404 or a refused key (after recording what was done), and
        ``OutputConflict`` (nothing sent) when ``output`` holds answers made with other options, unless
        ``overwrite``."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1; got {concurrency}")
        items = _numbered(sentences)
        options = _request_options(target, n_steps, method, baseline, precision, tolerance, max_steps, dtype, outputs)
        with open_output(output, items, options, overwrite=overwrite) as run:
            report = RunReport(output=run.output, total=len(items), skipped=len(items) - len(run.todo))
            start = time.monotonic()
            try:
                if run.todo:
                    self._run_todo(run, options, report, concurrency, progress)
            finally:
                report.seconds = time.monotonic() - start
        return report

    def _run_todo(self, run, options, report, concurrency, progress):
        """``concurrency`` senders keep that many requests in flight; as many checkers check, write and index what
        they fetched. A sender hands its reply over and sends the next request at once, so a server's workers do
        not wait while an answer is checked; at most ``concurrency`` replies wait for a checker (the memory cap:
        in all, at most 3 x concurrency answers are held, fetching, waiting or being checked). A server's first
        answer file is checked by its sender, before the next request: whether its files can be taken decides
        how the next one is asked."""
        tasks: queue.Queue = queue.Queue()
        fetched: queue.Queue = queue.Queue(maxsize=concurrency)
        results: queue.Queue = queue.Queue()
        for item in run.todo:
            tasks.put(item)
        stop = threading.Event()
        count = min(concurrency, len(run.todo))
        senders = [threading.Thread(target=self._sender, args=(tasks, fetched, results, stop, options, run.output),
                                    name=f"intgrads-client-{i}", daemon=True) for i in range(count)]
        checkers = [threading.Thread(target=self._checker, args=(fetched, results, stop, options, run.output),
                                     name=f"intgrads-check-{i}", daemon=True) for i in range(count)]
        bar = progress_bar(len(run.todo), progress)
        abort = None
        try:
            for worker in senders + checkers:
                worker.start()
            pending = len(run.todo)
            while pending:
                try:
                    record, error = results.get(timeout=0.2)
                except queue.Empty:
                    if not any(worker.is_alive() for worker in senders + checkers):
                        break
                    continue
                pending -= 1
                if error is not None and (error.fatal or error.interrupted):
                    if error.fatal:
                        abort = abort or error
                        stop.set()
                    continue    # not the sentence's fault: leave it unrecorded, to be sent again
                run.add(record)
                report.count(record)
                advance(bar, report)
        finally:
            stop.set()
            if bar is not None:
                bar.close()
        if abort is not None and abort.no_server:
            raise RunAborted(str(abort), url=abort.url, attempts=abort.attempts, no_server=True)
        if abort is not None:
            raise RunAborted(f"stopped: {abort} (from {abort.url}); no sentence can succeed like this",
                             status=abort.status, url=abort.url, attempts=abort.attempts)

    def _sender(self, tasks, fetched, results, stop, options, output):
        while not stop.is_set():
            try:
                line, sentence = tasks.get_nowait()
            except queue.Empty:
                return
            started = time.monotonic()
            try:
                reply = self._post(sentence, options, binary=True, stop=stop, handoff=True,
                                   compact=_compact(sentence))
            except Exception as error:  # noqa: BLE001 - recorded by _record
                results.put(_record(line, sentence, options, started, error=error))
                continue
            if reply.handoff and reply.url not in self._proven:   # a server's first file: learn whether files
                self._finish(line, sentence, started, reply, options, output, results, stop)   # work, then send
                continue
            while not stop.is_set():
                try:
                    fetched.put((line, sentence, started, reply), timeout=0.2)
                    break
                except queue.Full:
                    continue

    def _checker(self, fetched, results, stop, options, output):
        while not stop.is_set():
            try:
                line, sentence, started, reply = fetched.get(timeout=0.2)
            except queue.Empty:
                continue
            self._finish(line, sentence, started, reply, options, output, results, stop)

    def _finish(self, line, sentence, started, reply, options, output, results, stop):
        """Check, write and index one fetched reply; its record (or why it has none) into ``results``."""
        try:
            name = f"{line:06d}.gzip"
            fields, url, attempts = self._keep(reply, output / name, sentence, options, stop)
            results.put(_record(line, sentence, options, started, fields=dict(file=name, **fields), url=url,
                                attempts=attempts))
        except Exception as error:  # noqa: BLE001 - a bug on one sentence must not hang the run
            results.put(_record(line, sentence, options, started, error=error))

    def _answer_into(self, path: Path, sentence: str, options: dict, stop) -> tuple[dict, str, int]:
        """Get one answer into ``path`` and its index fields (see :meth:`_keep`). Returns (fields, url, tries)."""
        reply = self._post(sentence, options, binary=True, stop=stop, handoff=True, compact=_compact(sentence))
        return self._keep(reply, path, sentence, options, stop)

    def _keep(self, reply: Reply, path: Path, sentence: str, options: dict, stop) -> tuple[dict, str, int]:
        """Keep the answer of ``reply`` in ``path``: from a server on this machine, the file it wrote (renamed here,
        no copy) when it is provably the answer; else, or when that file cannot be taken, the body (asked again
        as one). Returns (fields, url, tries)."""
        attempts = reply.attempts
        if reply.handoff:
            try:
                return self._take_file(reply, path, sentence, options), reply.url, attempts
            except (OSError, HandoffRefused) as error:
                with self._url_lock:
                    self._no_handoff.add(reply.url)   # this server's files are out of reach: bodies from now on
                self.handoff_fallbacks.append(f"{reply.url}: {error}")
                reply = self._post(sentence, options, binary=True, stop=stop, handoff=False, compact=_compact(sentence))
                attempts += reply.attempts
        try:
            answer, body = reply.answer, reply.body
            check_asked(answer, options, sentence)
            if reply.compact:
                answer, body = rebuilt(answer)
                with self._url_lock:
                    self.rebuilt += 1
            fields = index_fields(answer, reply.headers.get(SUMMARY_HEADER))
        except (AnswerRefused, ValueError) as error:
            raise ClientError(f"the server at {reply.url} sent a wrong answer: {error}", url=reply.url,
                              attempts=attempts, final=True) from None
        write_atomically(path, body)
        return fields, reply.url, attempts

    def _take_file(self, reply: Reply, path: Path, sentence: str, options: dict) -> dict:
        """The index fields of the answer file the server named, moved to ``path`` once checked (see
        ``intgrads.client.handoff``); raises HandoffRefused (the file left as it is) or OSError."""
        fields = {}

        def check(answer):
            try:
                check_asked(answer, options, sentence)
                fields.update(index_fields(answer, reply.headers.get(SUMMARY_HEADER)))
            except AnswerRefused as error:
                raise HandoffRefused(f"the file is not the answer asked for: {error}") from None

        self._taker.take(reply.url, pointer_of(reply.body), path, sent_at=reply.sent_at, check=check)
        with self._url_lock:
            self._proven.add(reply.url)
        return fields

    # -- HTTP -----------------------------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _may_handoff(self, url: str) -> bool:
        """Ask for the answer as a file only from a server of this user's on this machine (a loopback URL whose
        port a process of this user listens on) whose files we have not failed to take, and whose hand-off
        directory was not full a moment ago."""
        with self._url_lock:
            refused = url in self._no_handoff or self._handoff_paused.get(url, 0.0) > time.monotonic()
        return self.handoff and not refused and self._taker.may_ask(url)

    def _pick_url(self) -> str:
        with self._url_lock:
            return self.urls[next(self._next_url)]

    def _asked(self, url, headers, payload, *, handoff: bool, compact: bool) -> tuple[dict, dict, bool]:
        """The headers and body of one try at ``url``, and whether it asks for a file: a hand-off from a server on
        this machine, else (``compact``, and ``rebuild`` says so for this server) x and b instead of the
        intermediates, unless it can't send them."""
        if handoff and self._may_handoff(url):
            return {**headers, HANDOFF_HEADER: HANDOFF_REQUEST}, payload, True
        wanted = self.rebuild == "always" or (self.rebuild == "remote" and not on_this_machine(url))
        steps = payload.get("n_steps")
        wanted = wanted and not (isinstance(steps, int) and steps > MAX_REBUILD_STEPS)   # whole answers then
        wanted = wanted and "outputs" not in payload and "dtype" not in payload   # the keys and dtype asked for
        with self._url_lock:
            compact = compact and wanted and url not in self._no_compact
        return dict(headers), ({**payload, "outputs": list(COMPACT_OUTPUTS)} if compact else payload), False

    def _post(self, sentence, options, *, binary: bool, stop: threading.Event | None = None, handoff: bool = False,
              compact: bool = False) -> Reply:
        """POST once per try until an answer; returns a :class:`Reply` or raises :class:`ClientError`.
        ``handoff``: ask a server on this machine for the answer as a file; ``compact``: otherwise ask for x and b
        instead of the intermediates. A gzip body is decoded and checked here: a broken one is tried again."""
        fields = getattr(sentence, "fields", None)   # a causal LM request's own fields (inputs.PromptRequest)
        payload = {**options, **fields} if fields is not None else {"sequence": sentence, **options}
        headers = {"Content-Type": "application/json",
                   "Accept": "application/gzip" if binary else "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        attempt = 0
        while True:
            attempt += 1
            url = self._pick_url()
            asked, sent, file_asked = self._asked(url, headers, payload, handoff=handoff and binary,
                                                  compact=compact and binary)
            reply = Reply(b"", url, attempt, {}, handoff=file_asked, compact=sent is not payload, sent_at=time.time())
            try:
                response = self._session().post(url, json=sent, headers=asked, stream=True,
                                                timeout=(min(10.0, self.timeout), self.timeout))
                self._answered = True
                with response:
                    answer_body = binary and response.status_code == 200
                    reply.stream = StreamedAnswer() if answer_body else None   # inflated as it arrives
                    reply.body = read_capped(response, self.max_answer_bytes if answer_body else MAX_SMALL_BODY,
                                             truncate=response.status_code != 200,
                                             sink=reply.stream.feed if answer_body else None)
                reply.headers = response.headers
                error = self._refusal(reply, response.status_code, binary)
                if error is None:
                    return reply
            except ClientError:
                raise
            except AnswerRefused as exc:
                raise ClientError(str(exc), url=url, attempts=attempt, final=True) from None
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError) as exc:
                error = self._connection_error(exc, url, attempt)
            except (OSError, urllib3.exceptions.HTTPError) as exc:  # the connection dropped while reading the body
                error = ClientError(f"{type(exc).__name__}: {short(exc)}", status=None, url=url, attempts=attempt)
            if error is _ASK_AGAIN:
                attempt -= 1
                continue
            self._wait_or_raise(error, attempt, stop)

    def _connection_error(self, exc, url: str, attempt: int) -> ClientError:
        """The :class:`ClientError` of a try that got no HTTP answer. While no URL has ever answered, a URL where no
        connection can be made counts as having no server; once every URL is such, the error is ``no_server``:
        the run stops after this first round instead of retrying for minutes."""
        reason = no_connection(exc)
        if reason is None:
            return ClientError(f"{type(exc).__name__}: {short(exc)}", status=None, url=url, attempts=attempt)
        with self._url_lock:
            if not self._answered:
                self._unreachable[url] = reason
            nobody = not self._answered and set(self._unreachable) >= set(self.urls)
        if nobody:
            where = ", ".join(self.urls)
            return ClientError(f"no server at {where} ({reason}): is it running? {START_HINT}", status=None, url=url,
                               attempts=attempt, no_server=True)
        return ClientError(f"no connection to {url}: {reason}", status=None, url=url, attempts=attempt)

    def _refusal(self, reply: Reply, status: int, binary: bool):
        """None when ``reply`` is an answer (its gzip body decoded into ``reply.answer``); ``_ASK_AGAIN`` to ask at
        once without what the server could not give (a file, x and b); else the :class:`ClientError` of this try."""
        url, body = reply.url, reply.body
        if status == 200:
            if reply.handoff and reply.headers.get(HANDOFF_HEADER):
                return None
            reply.handoff = False   # a hand-off header in a reply that did not ask for one means nothing
            if not binary:
                return None
            if body[:2] != GZIP_MAGIC:
                return ClientError(f"the server at {url} answered 200 but not with a gzip answer "
                                   f"({reply.headers.get('Content-Type', 'no content type')})", status=status,
                                   url=url, attempts=reply.attempts)
            try:
                reply.answer = reply.stream.answer(compact=reply.compact)
            except AnswerInvalid as exc:   # cut short or damaged on the way: asked again
                return ClientError(f"the server at {url} sent a broken answer: {exc}", url=url,
                                   attempts=reply.attempts)
            return None
        if status == 507 and reply.handoff:
            with self._url_lock:   # its hand-off directory is full: this answer, and the next for a while, as bodies
                self._handoff_paused[url] = time.monotonic() + HANDOFF_PAUSE_SECONDS
            return _ASK_AGAIN
        if status == 400 and reply.compact and ENDPOINT_NAMES[0] in error_text(body):
            with self._url_lock:   # a server that can't send x and b: whole answers from it
                self._no_compact.add(url)
            return _ASK_AGAIN
        return ClientError(f"HTTP {status}: {error_text(body)}", status=status, url=url, attempts=reply.attempts,
                           retry_after=retry_after(reply.headers.get("Retry-After")))

    def _wait_or_raise(self, error: ClientError, attempt: int, stop):
        """Raise ``error`` when it is final or the tries are used up; else wait the backoff (or Retry-After)."""
        if not error.retryable or attempt > self.retries:
            if error.retryable and attempt > 1:
                error.args = (f"{error.args[0]} (gave up after {attempt} tries)",)
            raise error
        delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        if error.retry_after is not None:
            delay = max(delay, min(self.max_backoff, error.retry_after))
        if stop is not None:
            if stop.wait(delay):
                raise ClientError("interrupted", status=None, url=error.url, attempts=attempt, interrupted=True)
        else:
            time.sleep(delay)


_ASK_AGAIN = ClientError("ask again")   # a marker: the same try again at once, without a file or x and b


def _compact(sentence) -> bool:
    """Whether to ask for a compact answer (x and b instead of the intermediates, rebuilt here): a classifier's;
    a causal LM's request (a JSONL line with fields) has no x and b to rebuild from."""
    return not hasattr(sentence, "fields")


def _record(line, sentence, options, started, *, fields=None, url=None, attempts=1, error=None):
    """(index record, error or None) of one sentence: its answer's fields, or why it has none."""
    record = {"line": line, **sentence_fields(sentence)}
    seconds = round(time.monotonic() - started, 4)
    if error is None:
        record.update(**fields, seconds=seconds, attempts=attempts, url=url, options=options)
        return record, None
    if not isinstance(error, ClientError):   # a bug on one sentence: recorded, the run goes on
        error = ClientError(f"{type(error).__name__}: {error}")
    record.update(file=None, error=str(error), status=error.status, seconds=seconds, attempts=error.attempts,
                  url=error.url, options=options)
    return record, error


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
