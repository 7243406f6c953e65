#!/usr/bin/env python3
"""What reduced-precision compute costs in fidelity and saves in time (``scripts/bench.py`` part 7).

For each model and each ``precision`` (float32, bfloat16, float16), the engine (``intgrads.attribute``, 50
Gauss-Legendre steps, target 1, zero baseline, the launcher's chunk_tokens) runs the same sentences. float32 is
the reference: the engine's float32 answer equals captum's LayerIntegratedGradients (tests/engine). Per
precision it reports, over the sentences:

- seconds per sentence (median of ``--repeats`` after a warm-up) and the speed-up over float32;
- the largest relative IG error, max|IG_p - IG_32| / max|IG_32|, per sentence, then the worst sentence;
- the largest change of the convergence delta, |delta_p - delta_32| (the delta itself is mostly quadrature
  error, which the precision does not change);
- the top-5 agreement: tokens shared by the five largest |token attributions| of each, the worst sentence;
- whether the predicted class stayed the same.

Models (``--models``): ``demo`` (the built-in demo model: a real MiniLM encoder with a fitted sentiment head, on
real reviews) and ``bert-base`` (the bert-base shape with seeded weights, on sentences of ``--tokens`` tokens).

    .venv/bin/python scripts/bench_precision.py --json docs/bench_precision_cpu.json
    python scripts/bench_precision.py --device cuda --models bert-base --tokens 64 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

REVIEWS = (
    "The service was terrible and the food was awful.",
    "An absolutely delightful book, I enjoyed it.",
    "The plot was brilliant and the acting superb, though the ending dragged on far too long for my taste.",
    "I hated the ending; it was a disappointing mess.",
    "Wonderful hosts and a beautiful view, but the room smelled awful and the bed was filthy.",
    "The concert was amazing and the crowd was great.",
)


def _load(model: str, device: str, work: Path):
    import bench_common
    import bench_engine

    import intgrads

    if model == "demo":
        from intgrads.launcher.demo import ensure_demo_model

        return intgrads.load_model("hf", ensure_demo_model(work), device=device)
    weights = bench_engine.make_bert(work)
    return intgrads.load_model("bert", weights, tokenizer=bench_common.default_tokenizer(), device=device)


def _top(attributions, k: int = 5) -> set:
    return set(attributions.abs().topk(min(k, attributions.numel())).indices.tolist())


def compare(reference: dict, answer: dict) -> dict:
    """Fidelity of one answer against its float32 reference."""
    ig, ig32 = answer["integrated_gradients"], reference["integrated_gradients"]
    return {
        "ig_relative_error": float((ig - ig32).abs().max() / ig32.abs().max()),
        "delta_change": abs(answer["convergence_delta"] - reference["convergence_delta"]),
        "top5_shared": len(_top(answer["token_attributions"]) & _top(reference["token_attributions"])),
        "same_prediction": int(answer["logits"].argmax()) == int(reference["logits"].argmax()),
    }


def run(model: str, sentences, *, device: str = "cpu", steps: int = 50, repeats: int = 2,
        precisions=("float32", "bfloat16", "float16")) -> dict:
    from bench_engine import median_time

    import intgrads
    from intgrads.engine.options import DEFAULT_CHUNK_TOKENS

    work = Path(tempfile.mkdtemp(prefix="intgrads-precision-"))
    bundle = _load(model, device, work)

    def attribute(sentence, precision):
        return intgrads.attribute(bundle, sentence, n_steps=steps, precision=precision,
                                  chunk_tokens=DEFAULT_CHUNK_TOKENS)

    references = [attribute(sentence, "float32") for sentence in sentences]
    rows = []
    for precision in precisions:
        seconds = statistics.mean(median_time(lambda s=s: attribute(s, precision), repeats) for s in sentences)
        fidelity = [compare(ref, attribute(s, precision)) for ref, s in zip(references, sentences)]
        rows.append({
            "precision": precision, "seconds_per_sentence": seconds,
            "ig_relative_error": max(f["ig_relative_error"] for f in fidelity),
            "delta_change": max(f["delta_change"] for f in fidelity),
            "top5_shared_min": min(f["top5_shared"] for f in fidelity),
            "top5_shared_mean": statistics.mean(f["top5_shared"] for f in fidelity),
            "same_prediction": all(f["same_prediction"] for f in fidelity),
        })
        print(f"  {model} {precision}: {seconds * 1e3:.0f} ms/sentence", flush=True)
    base = rows[0]["seconds_per_sentence"]
    for row in rows:
        row["speedup"] = base / row["seconds_per_sentence"]
    tokens = [len(reference["tokens"]) for reference in references]
    return {"model": model, "device": str(bundle.device), "steps": steps, "sentences": len(sentences),
            "tokens": [min(tokens), max(tokens)], "rows": rows}


def print_rows(results):
    print("\n(7) reduced precision vs float32 (fidelity: worst sentence; float32 = captum-exact reference)")
    print(f"{'model':>10} {'device':>7} {'tokens':>8} {'precision':>9} {'ms/sent':>8} {'speed-up':>8} "
          f"{'IG rel err':>10} {'|Δdelta|':>9} {'top-5 min/mean':>14} {'same class':>10}")
    for result in results:
        for row in result["rows"]:
            tokens = "{}-{}".format(*result["tokens"])
            print(f"{result['model']:>10} {result['device']:>7} {tokens:>8} {row['precision']:>9} "
                  f"{row['seconds_per_sentence'] * 1e3:>8.0f} {row['speedup']:>8.2f} "
                  f"{row['ig_relative_error']:>10.2e} {row['delta_change']:>9.2e} "
                  f"{row['top5_shared_min']:>6}/{row['top5_shared_mean']:<7.2f} {str(row['same_prediction']):>10}")


def sentences_for(model: str, tokens: int, tokenizer=None):
    if model == "demo":
        return list(REVIEWS)
    import bench_common
    import bench_engine

    return [bench_engine.sentence_of(tokenizer, tokens)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["demo", "bert-base"], choices=("demo", "bert-base"))
    parser.add_argument("--tokens", type=int, nargs="+", default=[64], help="bert-base sentence lengths")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    import bench_common
    import bench_engine

    tokenizer = AutoTokenizer.from_pretrained(bench_common.default_tokenizer())
    results = []
    for model in args.models:
        for tokens in (args.tokens if model == "bert-base" else [None]):
            results.append(run(model, sentences_for(model, tokens, tokenizer), device=args.device, steps=args.steps,
                               repeats=args.repeats, precisions=args.precisions))
    print_rows(results)
    if args.json:
        from bench_common import machine

        Path(args.json).write_text(json.dumps({"machine": machine(), "command": " ".join(sys.argv), "results": results},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
