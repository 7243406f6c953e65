"""The answer reader without torch (``intgrads.answer.reader``, ``checks``, ``stream``): what it reads equals
``torch.load(weights_only=True)`` (the oracle) on real answers; hostile, random and mutated bytes are refused
with AnswerInvalid (never another error) within the caps; the client's CLI checks and keeps a plain answer
without importing torch."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import random
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import intgrads
from intgrads.answer.checks import AnswerInvalid, check_answer, decode_checked, load_checked, rule_of
from intgrads.answer.codec import gzip_stored
from intgrads.answer.keys import COMPACT_OUTPUTS
from intgrads.answer.reader import ReadRefused, read_saved
from intgrads.answer.stream import StreamedAnswer
from intgrads.answer.torchsave import save_bytes
from intgrads.engine.quadrature import METHODS, step_sizes_and_alphas

from .conftest import ENGINE_LOCK

SENTENCE = "a wonderful, moving film"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def answers(bundle):
    with ENGINE_LOCK:
        whole = intgrads.attribute(bundle, SENTENCE, n_steps=12)
        compact = intgrads.attribute(bundle, SENTENCE, n_steps=12, method="riemann_middle", endpoints=True)
    return {"whole": whole, "compact": intgrads.prepare_answer(compact, outputs=list(COMPACT_OUTPUTS)),
            "half": intgrads.prepare_answer(whole, dtype="float16")}


def same(loaded, read):
    """``read`` (NumPy) holds what torch.load gave, value for value and dtype for dtype."""
    if isinstance(loaded, torch.Tensor):
        assert isinstance(read, np.ndarray) and str(loaded.dtype) == f"torch.{read.dtype}"
        assert tuple(loaded.shape) == read.shape and np.array_equal(loaded.numpy(), read, equal_nan=True)
    elif isinstance(loaded, (list, tuple)):
        assert type(loaded) is type(read) and len(loaded) == len(read)
        for a, b in zip(loaded, read):
            same(a, b)
    elif isinstance(loaded, dict):
        assert list(loaded) == list(read)
        for key in loaded:
            same(loaded[key], read[key])
    else:
        assert type(loaded) is type(read) and (loaded == read or loaded != loaded)


def test_it_reads_what_torch_loads(answers):
    odd = {"ids": torch.arange(6).view(2, 3)[:, 1:], "empty": torch.zeros(0, 4), "flag": torch.tensor([True]),
           "double": torch.ones(2, dtype=torch.float64), "big": 2 ** 70, "neg": -3, "nan": float("nan"),
           "nest": {"k": [1, 2.0, None, ("t", False)]}, "text": "é\u2581"}
    for obj in (*answers.values(), [answers["whole"], answers["half"]], odd):
        raw = bytes(save_bytes(obj))
        same(torch.load(io.BytesIO(raw), weights_only=True), read_saved(raw))
    for name, answer in answers.items():   # and the whole path: gzip, both levels, streamed in odd pieces
        for level in (0, 1):
            payload = intgrads.encode_answer(answer, level=level)
            stream = StreamedAnswer()
            for start in range(0, len(payload), 777):
                stream.feed(payload[start:start + 777])
            for read in (decode_checked(payload, compact=name == "compact"), stream.answer(compact=name == "compact")):
                same(torch.load(io.BytesIO(gzip.decompress(payload)), weights_only=True), read)


def test_every_rule_of_the_engine_passes_and_another_does_not():
    """The checks' NumPy rules against the engine's (torch.linspace for Riemann points), in float32 and float16."""
    for method in METHODS:
        for n in (1, 2, 3, 9, 10, 13, 17, 50, 64, 257, 1000, 1024):
            if n < (1 if method == "gausslegendre" else 2) or (method == "gausslegendre" and n > 64):
                continue
            sizes, alphas = step_sizes_and_alphas(method, n)
            for dtype in (torch.float32, torch.float16):
                answer = {"logits": np.zeros((1, 2), np.float32), "n_steps": n, "method": method,
                          "step_sizes": torch.tensor(sizes).to(dtype).view(n, 1).numpy(),
                          "alphas": torch.tensor(alphas).to(dtype).numpy()}
                check_answer(answer)
                other = "riemann_right" if method != "riemann_right" else "riemann_left"
                if n > 2:
                    wrong = {**answer, "alphas": torch.tensor(step_sizes_and_alphas(other, n)[1]).to(dtype).numpy()}
                    with pytest.raises(AnswerInvalid, match="alphas are not those"):
                        check_answer(wrong)
    assert np.array_equal(rule_of("gausslegendre", 7)[0], step_sizes_and_alphas("gausslegendre", 7)[0])


def saved_zip(pickled: bytes, storages: dict | None = None) -> bytes:
    """A torch.save-like zip holding ``pickled`` as data.pkl and ``storages`` ({key: bytes})."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", b"little")
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
    return buffer.getvalue()


def tensor_pickle(size, stride, offset=0, numel=4, storage="FloatStorage", hooks=b"ccollections\nOrderedDict\n)R"):
    """A protocol-2 pickle of one tensor: _rebuild_tensor_v2 over storage '0', written opcode by opcode."""
    def ints(values):
        return b"(" + b"".join(b"J" + int(v).to_bytes(4, "little", signed=True) for v in values) + b"t"
    return (b"\x80\x02}(X\x01\x00\x00\x00tctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage"
            + b"ctorch\n" + storage.encode() + b"\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuJ"
            + numel.to_bytes(4, "little", signed=True) + b"tQJ" + offset.to_bytes(4, "little", signed=True)
            + ints(size) + ints(stride) + b"\x89" + hooks + b"tRu.")


HOSTILE_PICKLES = {
    "os.system": pickle.dumps(__import__("os").system, protocol=2),
    "a class": pickle.dumps(zipfile.ZipInfo("x"), protocol=2),
    "a set": pickle.dumps({1, 2}, protocol=2),
    "bytes": pickle.dumps({"b": b"x"}, protocol=3),
    "deep": b"\x80\x02" + b"]" * 100 + b"a" * 99 + b".",
    "cycle": b"\x80\x02]q\x00h\x00a.",
    "huge text": b"\x80\x02X\xff\xff\xff\x7fabc.",
    "long4": b"\x80\x02\x8b\xff\xff\xff\x7f.",
    "empty stack": b"\x80\x02s.",
    "no stop": b"\x80\x02]",
    "after stop": b"\x80\x02N.N",
    "memo miss": b"\x80\x02h\x05.",
    "unhashable key": b"\x80\x02}]]s.",
    "past its storage": tensor_pickle((5,), (1,)),
    "stride 0 blow-up": tensor_pickle((1 << 30,), (0,)),
    "negative stride": tensor_pickle((2,), (-1,), offset=2),
    "offset past": tensor_pickle((1,), (1,), offset=4),
    "storage size lies": tensor_pickle((2,), (1,), numel=3),
    "bfloat16": tensor_pickle((2,), (1,), storage="BFloat16Storage"),
    "hooks": tensor_pickle((2,), (1,), hooks=b"}(X\x01\x00\x00\x00aNu"),
    "a function as hooks": tensor_pickle((2,), (1,), hooks=b"cbuiltins\neval\n"),
}


def test_hostile_pickles_are_refused_within_the_caps():
    with pytest.raises(ReadRefused, match="runs past 1,000,000 steps"):   # ~35 MB of lists, then refused
        read_saved(saved_zip(b"\x80\x02]" + b"]a" * 600_000 + b"."))
    tracemalloc.start()
    try:
        for name, pickled in HOSTILE_PICKLES.items():
            with pytest.raises(ReadRefused):
                read_saved(saved_zip(pickled, {"0": bytes(16)}))
                pytest.fail(name)
            with pytest.raises(AnswerInvalid, match="does not load"):
                load_checked(saved_zip(pickled, {"0": bytes(16)}))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2 ** 20, peak
    assert read_saved(saved_zip(tensor_pickle((2, 2), (2, 1)), {"0": bytes(16)}))["t"].shape == (2, 2)


def test_random_and_mutated_answers_are_refused_or_whole(answers):
    """Random bytes, and real answers with bytes flipped, cut or spliced (in the zip and in the gzip): each is
    refused with AnswerInvalid or, where only numbers changed, read and checked; nothing else is raised."""
    rng = random.Random(28)
    raw = bytes(save_bytes(answers["whole"]))
    payload = intgrads.encode_answer(answers["whole"])
    outcomes = {"refused": 0, "read": 0}

    def attempt(data: bytes, gzipped: bool):
        try:
            if gzipped:
                decode_checked(data)
            else:
                load_checked(data)
            outcomes["read"] += 1
        except AnswerInvalid:
            outcomes["refused"] += 1

    for _ in range(60):
        attempt(os.urandom(rng.randrange(0, 4096)), rng.random() < 0.5)
        attempt(b"\x1f\x8b" + os.urandom(rng.randrange(0, 4096)), True)
    pickle_end = raw.index(b"PK", 64)
    for _ in range(400):
        data = bytearray(raw)
        where = rng.choice(("pickle", "directory", "anywhere"))
        for _ in range(rng.randrange(1, 4)):
            if where == "pickle":
                at = rng.randrange(64, pickle_end)
            elif where == "directory":
                at = rng.randrange(len(data) - 600, len(data))
            else:
                at = rng.randrange(len(data))
            data[at] = rng.randrange(256)
        if rng.random() < 0.1:
            data = data[:rng.randrange(len(data))]
        attempt(bytes(data), False)
        attempt(gzip_stored(bytes(data)), True)
    for _ in range(100):
        data = bytearray(payload)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        attempt(bytes(data), True)
    assert outcomes["refused"] > 400 and outcomes["read"] > 0, outcomes


def test_the_clients_command_keeps_a_plain_answer_without_torch(stub, tmp_path):
    sentences = tmp_path / "in.txt"
    sentences.write_text(f"{SENTENCE}\n")
    code = ("import sys\nfrom intgrads.client.cli import main\n"
            f"status = main([{str(sentences)!r}, '-o', {str(tmp_path / 'out')!r}, '--url', {stub.url!r}, "
            "'--no-progress', '--no-handoff', '--rebuild', 'never'])\n"
            "print(status, 'torch' in sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.split()[-2:] == ["0", "False"], done.stdout + done.stderr
    record = json.loads((tmp_path / "out" / "index.jsonl").read_text().splitlines()[-1])
    assert record["file"] == "000001.gzip" and (tmp_path / "out" / "000001.gzip").read_bytes() == stub.sent[SENTENCE]


def test_the_batch_job_adopts_a_whole_answer_file_by_its_own_dtype(answers, tmp_path):
    from intgrads.batch.adopt import _recovered

    path = tmp_path / "000001.gzip"
    for name, dtype in (("whole", "float32"), ("half", "float16")):
        path.write_bytes(intgrads.encode_answer(answers[name]))
        fields = {"n_steps": 12, "dtype": dtype}
        record = _recovered(path, 1, SENTENCE, fields)
        assert record is not None and record["recovered"] and record["n_steps"] == 12, name
        other = "float16" if dtype == "float32" else "float32"
        assert _recovered(path, 1, SENTENCE, {**fields, "dtype": other}) is None


def test_a_streamed_body_meets_the_bounds_of_a_whole_one():
    """Fed in pieces, a gzip is refused as decompress_bounded refuses it (the oracle: stdlib gzip), and a body
    whose first megabytes are zeros (held back, not refused) inflates whole."""
    from intgrads.answer.checks import INFLATION_SLACK, MAX_INFLATION

    def streamed(payload, piece=4096):
        stream = StreamedAnswer()
        for start in range(0, len(payload), piece):
            stream.feed(payload[start:start + piece])
        return stream.raw()

    front = bytes(12 << 20) + os.urandom(2 << 20)     # 14 MB, 12 of them zeros first: within 8 x its ~2 MB gzip
    payload = gzip.compress(front, compresslevel=1)
    assert len(front) <= MAX_INFLATION * len(payload) + INFLATION_SLACK
    assert streamed(payload, 1 << 16) == front
    bomb = gzip.compress(bytes(30 << 20), compresslevel=1)
    for bad, why in ((payload + gzip.compress(b"more"), "bytes follow"), (payload[:-9], "cut short"),
                     (payload[:-8] + b"\0\0\0\0" + payload[-4:], "damaged"), (bomb, "inflates past"),
                     (b"{}", "not a gzip")):
        with pytest.raises(AnswerInvalid, match=why):
            streamed(bad)
