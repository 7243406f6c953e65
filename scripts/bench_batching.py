#!/usr/bin/env python3
"""What running a TorchServe batch's requests together gains (``scripts/bench.py`` part 8).

With ``--batch-size N`` the handler runs the requests of one batch that share their options as padded engine
calls (``intgrads.serving.batching``). This measures the engine side of that, in process, on the bert-base
shape (seeded weights), 50 steps, the launcher's chunk_tokens: N sentences of T tokens attributed one after
another (batch size 1) against the same N in one padded call (what one bucket does), sentences/s of each, and
the largest difference between an answer of the padded call and the same sentence alone (the handler's
promise: 1e-5). The gain is largest where one sentence leaves the device idle: short sentences on a GPU.

``--mixed`` adds what the engine's buckets of similar length (``intgrads.engine.buckets``) save on a list of
sentences of mixed lengths (16 to 128 tokens, 20 steps): the list padded into one batch, as before buckets,
against the buckets, one timed run each.

    .venv/bin/python scripts/bench_batching.py --tokens 16 64 --count 8
    python scripts/bench_batching.py --device cuda --tokens 16 64 256 --count 8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

WORDS = ("the film was good and the plot was strange but the music felt bright while every scene seemed slow "
         "our dinner proved charming yet the cast remained honest").split()


def sentences_of(tokenizer, tokens: int, count: int) -> list[str]:
    """``count`` different sentences of exactly ``tokens`` tokens each."""
    out = []
    for shift in range(count):
        words = []
        while len(tokenizer(" ".join(words))["input_ids"]) < tokens:
            words.append(WORDS[(len(words) + shift) % len(WORDS)])
        out.append(" ".join(words))
    return out


def _timed(fn, device) -> float:
    import torch

    fn()   # warm-up
    started = time.perf_counter()
    fn()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def run(tokens: int, count: int, *, device: str = "cpu", steps: int = 50) -> dict:
    import bench_common
    import bench_engine

    import intgrads
    from intgrads.engine.options import DEFAULT_CHUNK_TOKENS

    bundle = intgrads.load_model("bert", bench_engine.make_bert(Path(tempfile.mkdtemp())),
                                 tokenizer=bench_common.default_tokenizer(), device=device)
    sentences = sentences_of(bundle.tokenizer, tokens, count)
    options = {"n_steps": steps, "chunk_tokens": DEFAULT_CHUNK_TOKENS}
    alone = [intgrads.attribute(bundle, sentence, **options) for sentence in sentences]
    together = intgrads.attribute(bundle, sentences, **options)
    difference = max(float((a[key] - b[key]).abs().max()) for a, b in zip(alone, together)
                     for key in ("integrated_gradients", "intermediate_gradients"))
    one_by_one = _timed(lambda: [intgrads.attribute(bundle, sentence, **options) for sentence in sentences], device)
    padded = _timed(lambda: intgrads.attribute(bundle, sentences, **options), device)
    return {"device": device, "tokens": tokens, "count": count, "steps": steps,
            "one_by_one_per_s": count / one_by_one, "together_per_s": count / padded,
            "gain": one_by_one / padded, "max_abs_difference": difference}


MIXED_TOKENS = (16, 24, 32, 48, 64, 96, 128, 16)


def run_mixed(*, device: str = "cpu", steps: int = 20) -> dict:
    """One padded batch of MIXED_TOKENS-long sentences against the engine's buckets of similar length."""
    import bench_common
    import bench_engine

    import intgrads
    from intgrads.engine import attribution
    from intgrads.engine.options import DEFAULT_CHUNK_TOKENS

    bundle = intgrads.load_model("bert", bench_engine.make_bert(Path(tempfile.mkdtemp())),
                                 tokenizer=bench_common.default_tokenizer(), device=device)
    sentences = [sentences_of(bundle.tokenizer, tokens, 1)[0] for tokens in MIXED_TOKENS]
    options = {"n_steps": steps, "chunk_tokens": DEFAULT_CHUNK_TOKENS}
    intgrads.attribute(bundle, sentences[:1], **options)   # warm-up
    started = time.perf_counter()
    bucketed = intgrads.attribute(bundle, sentences, **options)
    buckets_seconds = time.perf_counter() - started
    real = attribution.length_buckets
    attribution.length_buckets = lambda lengths: [list(range(len(lengths)))]   # every sentence in one batch
    try:
        started = time.perf_counter()
        padded = intgrads.attribute(bundle, sentences, **options)
        padded_seconds = time.perf_counter() - started
    finally:
        attribution.length_buckets = real
    difference = max(float((a["integrated_gradients"] - b["integrated_gradients"]).abs().max())
                     for a, b in zip(bucketed, padded))
    return {"device": device, "tokens": list(MIXED_TOKENS), "steps": steps, "one_batch_seconds": padded_seconds,
            "buckets_seconds": buckets_seconds, "gain": padded_seconds / buckets_seconds,
            "max_abs_difference": difference}


def print_rows(rows):
    print("\n(8) a batch's requests run together vs one by one (engine, in process, bert-base shape)")
    print(f"{'device':>7} {'tokens':>6} {'N':>3} {'one by one /s':>13} {'together /s':>11} {'gain':>6} {'max |diff|':>10}")
    for row in rows:
        print(f"{row['device']:>7} {row['tokens']:>6} {row['count']:>3} {row['one_by_one_per_s']:>13.2f} "
              f"{row['together_per_s']:>11.2f} {row['gain']:>6.2f} {row['max_abs_difference']:>10.1e}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--mixed", action="store_true", help="also: a mixed-length list, buckets vs one batch")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    rows = [run(tokens, args.count, device=args.device, steps=args.steps) for tokens in args.tokens]
    print_rows(rows)
    out = {"command": " ".join(sys.argv), "rows": rows}
    if args.mixed:
        out["mixed"] = mixed = run_mixed(device=args.device)
        print(f"\nmixed lengths {mixed['tokens']}, {mixed['steps']} steps: one padded batch "
              f"{mixed['one_batch_seconds']:.1f} s, buckets {mixed['buckets_seconds']:.1f} s "
              f"({mixed['gain']:.2f}x), max |IG difference| {mixed['max_abs_difference']:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
