"""The client trusts nothing a server sends: a hostile server of the tests' own (a small http.server on 127.0.0.1)
answers what a broken, old or compromised server might, with real answers from the real engine as raw material,
and the client must neither touch the user's files, nor run out of memory, nor record a wrong answer."""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import intgrads
from intgrads.answer.checks import AnswerInvalid, decode_checked, decompress_bounded
from intgrads.answer.keys import COMPACT_OUTPUTS
from intgrads.answer.summary import index_record
from intgrads.client import Client, read_index
from intgrads.client.handoff import HandoffRefused, HandoffTaker, tokens_match

from .conftest import ENGINE_LOCK

SENTENCE = "a wonderful, moving film"
OTHER = "dull and far too long"


class HostileServer:
    """A real HTTP server on 127.0.0.1 whose answers the test writes: ``respond(request) -> (status, headers,
    body)`` where ``request`` is ``{"path", "headers", "json"}`` and ``body`` is bytes or a list of chunks (sent
    with chunked transfer)."""

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = {"path": self.path, "headers": dict(self.headers), "json": json.loads(raw or b"{}")}
                server.requests.append(request)
                status, headers, body = server.respond(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if isinstance(body, list):
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for chunk in body:
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/predictions/tiny"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile():
    servers = []

    def make(respond):
        servers.append(HostileServer(respond))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def answers(bundle):
    """Real answers of the tiny model: {sentence: answer} at 20 steps, plus a compact one."""
    with ENGINE_LOCK:
        out = {text: intgrads.attribute(bundle, text, n_steps=20) for text in (SENTENCE, OTHER)}
        out["compact"] = intgrads.attribute(bundle, SENTENCE, n_steps=20, endpoints=True)
    return out


def gzip_answer(answer, **kwargs) -> bytes:
    return intgrads.encode_answer(answer, **kwargs)


def summary_of(answer) -> str:
    return json.dumps(index_record(intgrads.summarize_answer(answer)))


def run_one(url, tmp_path, **kwargs):
    client = Client(url, retries=kwargs.pop("retries", 0), backoff=0.01, **kwargs)
    report = client.run([SENTENCE], tmp_path / "out", progress=False)
    return client, report, read_index(tmp_path / "out" / "index.jsonl")


def users_file(folder: Path, content: bytes = b"the user's own notes") -> Path:
    """A file of the user's that looks like a hand-off answer: <32 hex>.gzip in a private folder named handoff."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / (secrets.token_hex(16) + ".gzip")
    path.write_bytes(content)
    return path


def pointer(path: Path) -> tuple[dict, bytes]:
    return ({"Content-Type": "application/json", "X-Intgrads-Handoff": str(path)},
            json.dumps({"file": str(path), "bytes": path.stat().st_size}).encode())


# -- hand-offs --------------------------------------------------------------------------------------------------

def test_a_handoff_it_did_not_ask_for_moves_nothing_and_its_pointer_is_no_answer(hostile, tmp_path):
    victim = users_file(tmp_path / "work" / "handoff")
    server = hostile(lambda request: (200, *pointer(victim)))
    for kwargs in ({"handoff": False}, {}):   # --no-handoff; and a client whose file was refused then asks again
        client, report, records = run_one(server.url, tmp_path / str(len(kwargs)), **kwargs)
        assert victim.read_bytes() == b"the user's own notes"   # not moved, not deleted
        assert (report.answered, report.failed) == (0, 1)
        assert "not with a gzip answer" in records[1]["error"] and records[1]["file"] is None
        assert not (tmp_path / str(len(kwargs)) / "out" / "000001.gzip").exists()
    # the second client asked for a file once, was refused (the file is no answer) and asked for the body: the same
    # pointer again is not taken for an answer
    assert [("X-Intgrads-Handoff" in r["headers"]) for r in server.requests[-2:]] == [True, False]
    assert "is not a whole answer: not a gzip answer" in client.handoff_fallbacks[0]


def test_a_named_file_is_taken_only_when_it_is_provably_the_answer(hostile, tmp_path, answers):
    folder = tmp_path / "srv" / "handoff"
    folder.mkdir(parents=True, mode=0o700)
    link_folder = tmp_path / "elsewhere" / "handoff"
    link_folder.parent.mkdir()
    link_folder.symlink_to(folder)
    plan = {}

    def respond(request):
        if "X-Intgrads-Handoff" not in request["headers"]:
            return 200, {"Content-Type": "application/gzip", "X-Intgrads-Summary": summary_of(answers[SENTENCE])}, \
                gzip_answer(answers[SENTENCE])
        payload = plan["payload"]
        target = plan.get("folder", folder) / (secrets.token_hex(16) + ".gzip")
        (folder / target.name).write_bytes(payload)
        os.chmod(folder / target.name, 0o600)
        return (200, *pointer(target))

    server = hostile(respond)
    cases = {"another sentence's answer": (gzip_answer(answers[OTHER]), folder, "not the answer asked for"),
             "a symlinked folder": (gzip_answer(answers[SENTENCE]), link_folder, "not a hand-off directory"),
             "half an answer": (gzip_answer(answers[SENTENCE])[:500], folder, "not a whole answer")}
    for name, (payload, where, why) in cases.items():
        plan.update(payload=payload, folder=where)
        client, report, records = run_one(server.url, tmp_path / name)
        assert why in client.handoff_fallbacks[0], name
        assert report.answered == 1, name            # then asked for the body, which is good
        left = [path.read_bytes() for path in folder.iterdir()]
        assert left == [payload], name               # the refused file is left as it was
        for path in folder.iterdir():
            path.unlink()
    # a private folder made public is no hand-off folder either
    os.chmod(folder, 0o755)
    plan.update(payload=gzip_answer(answers[SENTENCE]), folder=folder)
    client, report, _ = run_one(server.url, tmp_path / "public")
    assert "not private" in client.handoff_fallbacks[0] and len(list(folder.iterdir())) == 1
    for path in folder.iterdir():
        path.unlink()
    os.chmod(folder, 0o700)
    # the positive control: the right answer, freshly written in a private folder, is moved (no copy left)
    client, report, records = run_one(server.url, tmp_path / "good")
    assert client.handoff_fallbacks == [] and report.answered == 1 and list(folder.iterdir()) == []
    assert (tmp_path / "good" / "out" / "000001.gzip").read_bytes() == plan["payload"]


def test_the_taker_checks_name_size_links_and_folder_identity(tmp_path, answers):
    folder = tmp_path / "handoff"
    taker, url = HandoffTaker(), "http://127.0.0.1:1/predictions/x"
    payload = gzip_answer(answers[SENTENCE])

    def take(path, size=None, **kwargs):
        return taker.take(url, {"file": str(path), "bytes": size or path.stat().st_size}, tmp_path / "out.gzip",
                          sent_at=kwargs.get("sent_at", time.time() - 1), check=lambda answer: None)

    good = users_file(folder, payload)
    for bad in (tmp_path / good.name, folder / "passwd", folder / ("A" * 32 + ".gzip")):
        with pytest.raises((HandoffRefused, FileNotFoundError)):
            taker.take(url, {"file": str(bad), "bytes": 10}, tmp_path / "out.gzip", sent_at=0, check=lambda a: None)
    with pytest.raises(HandoffRefused, match="not the 10 the server said"):
        take(good, size=10)
    linked = folder / (secrets.token_hex(16) + ".gzip")
    os.link(good, linked)
    with pytest.raises(HandoffRefused, match="one link"):
        take(good)
    linked.unlink()
    with pytest.raises(HandoffRefused, match="older than the request"):
        take(good, sent_at=time.time() + 60)
    answer = take(good)
    assert answer["tokens"] == answers[SENTENCE]["tokens"] and not good.exists()
    assert (tmp_path / "out.gzip").read_bytes() == payload
    # once a server's folder is known, a file elsewhere is refused even when everything else holds
    second = users_file(tmp_path / "b" / "handoff", payload)
    with pytest.raises(HandoffRefused, match="used before"):
        take(second)
    assert second.exists()


def test_tokens_match_the_sentence_they_came_from():
    assert tokens_match(["[CLS]", "a", "wonder", "##ful", ",", "moving", "film", "[SEP]"], SENTENCE)
    assert tokens_match(["\u2581A", "\u2581wonder", "ful", "<sep>", "<cls>"], "A wonderful")
    assert tokens_match(["[CLS]", "cafe", "[SEP]"], "Café")
    assert not tokens_match(["[CLS]", "dull", "[SEP]"], SENTENCE)
    assert not tokens_match(["[CLS]", "film", "moving", "[SEP]"], SENTENCE)   # order matters


def test_a_507_from_a_full_handoff_folder_takes_the_body_at_once(hostile, tmp_path, answers):
    payload = gzip_answer(answers[SENTENCE])

    def respond(request):
        if "X-Intgrads-Handoff" in request["headers"]:
            return 507, {"Content-Type": "application/json"}, b'{"error": "the hand-off directory is full"}'
        return 200, {"Content-Type": "application/gzip"}, payload

    server = hostile(respond)
    client, report, records = run_one(server.url, tmp_path, retries=3)
    assert report.answered == 1 and records[1]["attempts"] == 1
    assert [("X-Intgrads-Handoff" in r["headers"]) for r in server.requests] == [True, False]


# -- bodies -----------------------------------------------------------------------------------------------------

def test_a_compact_body_is_checked_before_it_is_rebuilt(hostile, tmp_path, answers):
    compact = {key: value for key, value in answers["compact"].items() if key != "intermediates"}
    without_points = {key: value for key, value in compact.items() if key not in ("alphas", "step_outputs")}
    # 50,000 steps next to 20-step gradients; and a consistent 50,000-step answer of a one-wide layer (234 KB)
    # without its points (an older server's), whose Gauss-Legendre rule would take gigabytes to build
    tiny = {**without_points, "n_steps": 50_000, "intermediate_gradients": torch.zeros(50_000, 1, 1),
            "step_sizes": torch.zeros(50_000, 1), "integrated_gradients": torch.zeros(1, 1, 1),
            "layer_input": torch.zeros(1, 1, 1), "layer_baseline": torch.zeros(1, 1, 1), "tokens": ["a"],
            "input_ids": torch.zeros(1, 1, dtype=torch.int64), "token_attributions": torch.zeros(1)}
    bodies = {"n_steps 7 beside 20 steps": ({**compact, "n_steps": 7}, "has shape (20,"),
              "another method's points": ({**compact, "method": "riemann_left"}, "not those of riemann_left"),
              "a 50,000-step bomb": (tiny, "more than the 1024 a client rebuilds")}
    for name, (body, why) in bodies.items():
        server = hostile(lambda request, body=body: (200, {"Content-Type": "application/gzip"}, gzip_answer(body)))
        started = time.monotonic()
        _, report, records = run_one(server.url, tmp_path / name, rebuild="always", handoff=False)
        assert time.monotonic() - started < 30, name
        assert server.requests[0]["json"]["outputs"] == list(COMPACT_OUTPUTS)
        assert report.answered == 0 and why in records[1]["error"], (name, records[1]["error"])
        assert not (tmp_path / name / "out" / "000001.gzip").exists()


def test_a_gzip_bomb_is_stopped_after_a_few_megabytes(hostile, tmp_path):
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(squeeze.compress(bytes(1 << 20)) for _ in range(200)) + squeeze.flush()   # 200 MB in ~200 KB
    assert len(bomb) < 400_000
    with pytest.raises(AnswerInvalid, match="inflates past"):
        decompress_bounded(bomb)
    server = hostile(lambda request: (200, {"Content-Type": "application/gzip"}, bomb))
    _, report, records = run_one(server.url, tmp_path)
    assert report.failed == 1 and "inflates past" in records[1]["error"]


def test_bounded_inflation_at_its_edges():
    """The limit is the most bytes an answer may inflate to: exactly that is taken, one more is refused; a second
    gzip member, a byte after the answer, a cut stream and a wrong CRC-32 are refused (the oracle: stdlib gzip)."""
    import gzip

    data = os.urandom(1 << 16) + bytes(300_000)   # some of it incompressible, some of it not
    payload = gzip.compress(data)
    assert decompress_bounded(payload, limit=len(data)) == data == gzip.decompress(payload)
    with pytest.raises(AnswerInvalid, match="inflates past"):
        decompress_bounded(payload, limit=len(data) - 1)
    for bad, why in ((payload + gzip.compress(b"more"), "bytes follow"), (payload + b"\0", "bytes follow"),
                     (payload[:-9], "cut short"), (payload[:-8] + b"\0\0\0\0" + payload[-4:], "damaged")):
        with pytest.raises(AnswerInvalid, match=why):
            decompress_bounded(bad)


def test_a_cut_answer_is_not_recorded_even_with_a_summary(hostile, tmp_path, answers):
    payload = gzip_answer(answers[SENTENCE])
    half = [payload[:len(payload) // 2]]   # a properly ended chunked body holding half the gzip
    server = hostile(lambda request: (200, {"Content-Type": "application/gzip",
                                            "X-Intgrads-Summary": summary_of(answers[SENTENCE])}, half))
    _, report, records = run_one(server.url, tmp_path, retries=1)
    assert (report.answered, report.failed) == (0, 1) and len(server.requests) == 2   # a broken answer is asked again
    assert "cut short" in records[1]["error"] and not (tmp_path / "out" / "000001.gzip").exists()
    with pytest.raises(AnswerInvalid, match="damaged|cut short"):
        decode_checked(payload[:-3] + b"\0\0\0")   # a wrong length in the trailer


def test_the_summary_header_can_only_confirm_the_answer(hostile, tmp_path, answers):
    answer = answers[SENTENCE]
    record = index_record(intgrads.summarize_answer(answer))
    forged = {**record, "line": 2, "sentence": "forged", "error": "forged", "file": "/etc/passwd"}
    headers = {"Content-Type": "application/gzip", "X-Intgrads-Summary": json.dumps(forged)}
    server = hostile(lambda request: (200, headers, gzip_answer(answer)))
    client = Client(server.url, retries=0, handoff=False)
    report = client.run([(1, SENTENCE), (2, OTHER)], tmp_path / "out", progress=False, concurrency=1)
    records = read_index(tmp_path / "out" / "index.jsonl")
    assert report.answered == 1 and report.failed == 1     # the answer to OTHER is SENTENCE's: refused
    assert records[1]["sentence"] == SENTENCE and records[1]["file"] == "000001.gzip" and "error" not in records[1]
    assert records[2]["sentence"] == OTHER and "tokens are not those of the sentence" in records[2]["error"]
    # a header that disagrees with the answer it comes with: nothing recorded as answered
    lying = {**record, "predicted": 1 - record["predicted"]}
    server = hostile(lambda request: (200, {"Content-Type": "application/gzip",
                                            "X-Intgrads-Summary": json.dumps(lying)}, gzip_answer(answer)))
    _, report, records = run_one(server.url, tmp_path / "lying")
    assert report.failed == 1 and "summary says predicted" in records[1]["error"]


def test_an_answer_with_other_settings_than_asked_is_refused(hostile, tmp_path, answers):
    server = hostile(lambda request: (200, {"Content-Type": "application/gzip"}, gzip_answer(answers[SENTENCE])))
    client = Client(server.url, retries=0)
    report = client.run([SENTENCE], tmp_path / "out", n_steps=50, progress=False)
    record = read_index(tmp_path / "out" / "index.jsonl")[1]
    assert report.failed == 1 and "n_steps is 20" in record["error"]


def test_a_run_removes_only_its_own_temporaries(stub, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.tmp").write_text("mine")
    (output / "000003.gzip.tmp").write_bytes(b"half")
    Client(stub.url, retries=0).run(["a fine film"], output, n_steps=4, progress=False)
    assert (output / "notes.tmp").read_text() == "mine" and not (output / "000003.gzip.tmp").exists()


def test_error_bodies_and_summaries_are_read_with_bounds(hostile, tmp_path):
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(squeeze.compress(bytes(1 << 20)) for _ in range(64)) + squeeze.flush()
    server = hostile(lambda request: (400, {"Content-Type": "application/json"}, bomb))
    _, report, records = run_one(server.url, tmp_path)
    assert report.failed == 1 and records[1]["status"] == 400
    deep = b"[" * 100_000 + b"]" * 100_000
    server = hostile(lambda request: (400, {"Content-Type": "application/json"}, deep))
    _, report, records = run_one(server.url, tmp_path / "deep")
    assert report.failed == 1 and records[1]["status"] == 400
