"""Answers handed over as files on the server's own machine (X-Intgrads-Handoff), and the index record in
X-Intgrads-Summary: real TorchServe, real HTTP, the real client."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch

import intgrads
from intgrads.answer.summary import index_record
from intgrads.client import Client, read_index
from intgrads.serving.handoff import HandoffDir, HandoffFull

from .conftest import post_json, start_server

SENTENCES = ["A wonderful, moving film.", "The food was awful.", "Nothing much happened, then it ended."]


def _equal_answers(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


def _handoff_files(server) -> list:
    return sorted(p.name for p in (server.run_dir / "handoff").iterdir())


def test_a_file_answer_is_the_body_answer_with_private_permissions(server):
    body = post_json(server.url("bert"), {"sequence": SENTENCES[0], "n_steps": 6})
    assert body.status_code == 200 and body.content[:2] == b"\x1f\x8b"
    handed = post_json(server.url("bert"), {"sequence": SENTENCES[0], "n_steps": 6},
                       headers={"X-Intgrads-Handoff": "file"})
    assert handed.status_code == 200, handed.text
    path = Path(handed.headers["X-Intgrads-Handoff"])
    assert handed.json() == {"file": str(path), "bytes": path.stat().st_size}
    assert path.parent == server.run_dir / "handoff"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 and stat.S_IMODE(path.stat().st_mode) == 0o600
    answer = intgrads.load_answer(path)
    _equal_answers(answer, intgrads.decode_answer(body.content))
    # the index record in the header is the decoded answer's
    for response in (body, handed):
        assert json.loads(response.headers["X-Intgrads-Summary"]) == index_record(intgrads.summarize_answer(answer))
    path.unlink()


def test_the_server_alone_chooses_where_a_file_goes(server):
    for value in ("/tmp/mine.gzip", "../x", "files"):
        response = post_json(server.url("bert"), {"sequence": "good"}, headers={"X-Intgrads-Handoff": value})
        assert response.status_code == 400
        assert "X-Intgrads-Handoff takes only \"file\"" in response.json()["error"]
    assert not any(Path("/tmp/mine.gzip").parent.glob("mine.gzip"))


def test_the_client_renames_answer_files_into_its_output(server, tmp_path):
    client = Client(server.url("bert"), retries=0)
    # one at a time: a batch of one request is bitwise the answer sent again below (this server batches 4)
    report = client.run(SENTENCES, tmp_path / "out", n_steps=6, concurrency=1, progress=False)
    assert (report.answered, report.failed) == (3, 0) and client.handoff_fallbacks == []
    assert _handoff_files(server) == []   # every file was taken
    records = read_index(tmp_path / "out" / "index.jsonl")
    for line, sentence in enumerate(SENTENCES, 1):
        body = post_json(server.url("bert"), {"sequence": sentence, "n_steps": 6})
        expected = intgrads.decode_answer(body.content)
        got = intgrads.load_answer(tmp_path / "out" / records[line]["file"])
        _equal_answers(got, expected)
        assert {k: records[line][k] for k in index_record(intgrads.summarize_answer(expected))} == \
            index_record(intgrads.summarize_answer(expected))


def test_the_client_falls_back_to_the_body_when_the_file_is_out_of_reach(server, tmp_path):
    folder = server.run_dir / "handoff"
    os.chmod(folder, 0o755)   # no longer private: the client takes nothing from it
    try:
        client = Client(server.url("bert"), retries=0)
        report = client.run(SENTENCES[:2], tmp_path / "out", n_steps=6, concurrency=1, progress=False)
    finally:
        os.chmod(folder, 0o700)
    assert (report.answered, report.failed) == (2, 0)
    assert len(client.handoff_fallbacks) == 1 and "not private" in client.handoff_fallbacks[0]
    left = _handoff_files(server)
    assert len(left) == 1   # the one uncollected file (it expires); the second sentence was not asked as a file
    (folder / left[0]).unlink()
    for line, sentence in enumerate(SENTENCES[:2], 1):
        body = post_json(server.url("bert"), {"sequence": sentence, "n_steps": 6})
        _equal_answers(intgrads.load_answer(tmp_path / "out" / f"{line:06d}.gzip"), intgrads.decode_answer(body.content))


def test_a_full_disk_is_a_full_handoff_directory(tmp_path):
    """Writing past the disk's room, a quota or the file-size limit (here RLIMIT_FSIZE: EFBIG) is HandoffFull,
    the 507 the client answers by asking for the body; nothing half-written stays."""
    code = f"""
import resource
from intgrads.serving.handoff import HandoffDir, HandoffFull
folder = HandoffDir({str(tmp_path / "handoff")!r})
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    folder.put(b"x" * 100_000)
except HandoffFull as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "has no room for this answer" in result.stdout and "ask without X-Intgrads-Handoff" in result.stdout
    assert list((tmp_path / "handoff").iterdir()) == []


def test_uncollected_files_expire_and_the_directory_is_bounded(tmp_path):
    folder = HandoffDir(tmp_path / "handoff", max_bytes=100, ttl=60)
    assert stat.S_IMODE((tmp_path / "handoff").stat().st_mode) == 0o700
    first = folder.put(b"x" * 60)
    assert stat.S_IMODE(first.stat().st_mode) == 0o600 and first.read_bytes() == b"x" * 60
    with pytest.raises(HandoffFull, match="holds 0 MB of uncollected answers .* over its 0 MB bound"):
        folder.put(b"y" * 50)
    assert sorted(p.name for p in folder.path.iterdir()) == [first.name]   # nothing half-written left
    old = time.time() - 61
    os.utime(first, (old, old))
    second = folder.put(b"y" * 50)   # the expired one is swept first
    assert sorted(p.name for p in folder.path.iterdir()) == [second.name]
    stale = folder.path / ".deadbeef.gzip.tmp"
    stale.write_bytes(b"partial")
    os.utime(stale, (old, old))
    assert folder.sweep() == 50 and not stale.exists()


@pytest.fixture(scope="module")
def small_handoff_server(tmp_path_factory, bert_files):
    server = start_server(tmp_path_factory, "handoff-bound",
                          ["-bp", bert_files.weights, "--config", bert_files.config, "--tokenizer", bert_files.tokenizer,
                           "--workers", "1", "--handoff-max-bytes", "1000", "--gzip-level", "1"])
    try:
        yield server
    finally:
        server.stop()


def test_stored_answers_by_default_and_compressed_ones_load_the_same(server, small_handoff_server):
    """By default (--gzip-level 0) the body is a gzip of stored deflate blocks (BTYPE 00), the README's snippet
    loads it, and it holds the answer of a --gzip-level 1 server's compressed one."""
    request = {"sequence": SENTENCES[2], "n_steps": 6}
    stored = requests.post(server.url("bert"), json=request, timeout=120)
    compressed = requests.post(small_handoff_server.url("bert"), json=request, timeout=120)
    assert stored.status_code == 200 and compressed.status_code == 200
    assert stored.content[:2] == b"\x1f\x8b" and stored.content[10] & 0b110 == 0          # first block stored
    assert compressed.content[10] & 0b110 != 0                                               # compressed
    raw = gzip.decompress(stored.content)
    assert len(stored.content) == len(raw) + 18 + 5 * -(-len(raw) // 65535)
    a, b = torch.load(io.BytesIO(raw), weights_only=True), intgrads.decode_answer(compressed.content)
    assert a.keys() == b.keys()
    for key, value in a.items():   # the two servers run other torch thread counts: equal to float rounding
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert torch.allclose(value, b[key], rtol=1e-4, atol=1e-6 * float(b[key].abs().max())), key
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key] or key == "convergence_delta", key


def test_a_full_handoff_directory_answers_507_and_the_body_still_works(small_handoff_server):
    server = small_handoff_server
    response = post_json(server.url("bert"), {"sequence": SENTENCES[1], "n_steps": 6},
                         headers={"X-Intgrads-Handoff": "file"})
    assert response.status_code == 507
    assert "over its 0 MB bound" in response.json()["error"] and "without X-Intgrads-Handoff" in response.json()["error"]
    assert _handoff_files(server) == []
    body = requests.post(server.url("bert"), json={"sequence": SENTENCES[1], "n_steps": 6}, timeout=120)
    assert body.status_code == 200 and body.content[:2] == b"\x1f\x8b"
    stopped = server.stop()
    assert stopped.returncode == 0 and not (server.run_dir / "handoff").exists()
