#!/usr/bin/env python3
"""What encoding one answer costs: ``encode_answer`` by gzip level and by who computes the zip's CRC-32s.

The answers are real: ``intgrads.attribute`` on the bert-base shape with seeded weights, sentences of
``--tokens`` tokens, 50 steps. For each, median of ``--repeats`` (after the process reuses freed memory, as a
worker does):

- ``torch CRC``: ``torch.save`` into memory with torch's own CRC-32s, then the gzip level, as encoding was before
  ``intgrads.answer.torchsave``;
- ``ISA-L CRC``: ``encode_answer`` as it is (``torch.save``'s same bytes, its CRC-32s from ISA-L);

at level 1 (ISA-L compression, the CPU default) and level 0 (stored, the ``--cuda`` default). Every payload is
loaded back with the README's ``gzip.open`` -> ``torch.load`` snippet, and the two ways' raw bytes are compared.

    .venv/bin/python scripts/bench_encode.py --tokens 64 256 --json docs/bench_encode_cpu.json
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_common  # noqa: E402
import bench_engine  # noqa: E402

import intgrads  # noqa: E402
from intgrads.answer import codec, torchsave  # noqa: E402


def torch_crc_encode(answer, level: int) -> bytes:
    """Encoding as it was: torch.save with torch's CRC-32s, then gzip."""
    buffer = io.BytesIO()
    torch.save(answer, buffer)
    if level == 0:
        return codec.gzip_stored(buffer.getbuffer())
    return codec._gzip.compress(buffer.getbuffer(), compresslevel=level)


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def snippet(payload: bytes):
    with gzip.open(io.BytesIO(payload), "rb") as handle:
        return handle.read()


def run(bundle, tokens: int, repeats: int) -> list[dict]:
    answer = intgrads.attribute(bundle, bench_engine.sentence_of(bundle.tokenizer, tokens))
    raw = len(torchsave.save_bytes(answer))
    rows = []
    for level in (1, 0):
        before, after = torch_crc_encode(answer, level), intgrads.encode_answer(answer, level=level)
        assert snippet(before) == snippet(after)   # the same torch.save bytes inside
        torch.load(io.BytesIO(snippet(after)), weights_only=True)
        row = {"tokens": tokens, "level": level, "raw_mb": raw / 1e6, "gzip_mb": len(after) / 1e6,
               "torch_crc_ms": median_ms(lambda: torch_crc_encode(answer, level), repeats),
               "isal_crc_ms": median_ms(lambda: intgrads.encode_answer(answer, level=level), repeats)}
        row["speedup"] = row["torch_crc_ms"] / row["isal_crc_ms"]
        row["isal_crc_mb_per_s"] = raw / 1e3 / row["isal_crc_ms"]
        rows.append(row)
    return rows


def print_rows(rows, repeats: int) -> None:
    print(f"\nencode_answer, bert-base shape, 50 steps, median of {repeats}; torch {torch.__version__}")
    print(f"{'tokens':>6} {'level':>5} {'raw MB':>7} {'gzip MB':>7} {'torch CRC ms':>12} {'ISA-L CRC ms':>12} "
          f"{'speed-up':>8} {'MB/s':>6}")
    for r in rows:
        print(f"{r['tokens']:>6} {r['level']:>5} {r['raw_mb']:>7.1f} {r['gzip_mb']:>7.1f} {r['torch_crc_ms']:>12.1f} "
              f"{r['isal_crc_ms']:>12.1f} {r['speedup']:>7.2f}x {r['isal_crc_mb_per_s']:>6.0f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    intgrads.reuse_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        weights = bench_engine.make_bert(Path(tmp))
        bundle = intgrads.load_model("bert", weights, tokenizer=bench_common.default_tokenizer())
    rows = [row for tokens in args.tokens for row in run(bundle, tokens, args.repeats)]
    print_rows(rows, args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
