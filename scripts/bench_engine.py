#!/usr/bin/env python3
"""Engine benchmark: the engine vs captum LayerIntegratedGradients, the old tool and the floor.

One run, one model (bert-base shape, seeded random weights, 2 labels), one sentence of
``--tokens`` tokens, ``--steps`` Gauss-Legendre steps, target 1, zero baseline:

- engine:   ``intgrads.attribute`` (integrated + intermediate gradients, one pass)
- captum:   captum ``LayerIntegratedGradients`` on the embeddings layer (integrated gradients only)
- old tool: two captum passes (the old tool ran one for the integrated and one for the
            intermediate gradients)
- floor:    one batched forward + input-gradient backward of the bare model at the interpolated
            points (what any method must at least do)

Prints the median time of ``--repeats`` runs of each and the ratios; ``--json FILE`` saves them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from captum.attr import LayerIntegratedGradients
from transformers import BertConfig, BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_common  # noqa: E402
import intgrads  # noqa: E402

WORDS = "the film was a wonderful moving experience but the ending felt rushed and awful".split()


def make_bert(directory: Path, seed: int = 0) -> Path:
    """A bert-base-shaped classifier with seeded random weights, saved as a state-dict .pth."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(num_labels=2)).eval()
    path = directory / "bert-base-seeded.pth"
    torch.save(model.state_dict(), path)
    return path


def sentence_of(tokenizer, n_tokens: int) -> str:
    """A sentence that the tokenizer turns into exactly ``n_tokens`` tokens, specials included."""
    words = []
    while len(tokenizer(" ".join(words))["input_ids"]) < n_tokens:
        words.append(WORDS[len(words) % len(WORDS)])
    return " ".join(words)


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(tokens: int, steps: int, repeats: int, device: str, tokenizer_dir: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_bert(Path(tmp))
        bundle = intgrads.load_model("bert", weights, tokenizer=tokenizer_dir or bench_common.default_tokenizer(),
                                     device=device)
    model, tokenizer = bundle.model, bundle.tokenizer
    sentence = sentence_of(tokenizer, tokens)
    encoded = tokenizer(sentence, return_tensors="pt").to(device)
    assert encoded["input_ids"].shape[1] == tokens
    extra = {"token_type_ids": encoded["token_type_ids"], "attention_mask": encoded["attention_mask"]}
    words = model.bert.embeddings.word_embeddings(encoded["input_ids"])
    zero = torch.zeros_like(words)

    def forward(word_vectors):
        return model(inputs_embeds=word_vectors, **extra).logits

    lig = LayerIntegratedGradients(forward, model.bert.embeddings)

    def engine():
        intgrads.attribute(bundle, sentence, target=1, n_steps=steps, baseline="zero")

    def captum():
        lig.attribute(words, zero, target=1, n_steps=steps, method="gausslegendre")

    def old_tool():
        captum()
        captum()

    alphas = torch.tensor(intgrads.step_sizes_and_alphas("gausslegendre", steps)[1], device=device)

    def floor():
        points = (alphas.view(-1, 1, 1) * words).detach().requires_grad_()
        batch = {key: value.expand(steps, -1) for key, value in extra.items()}
        logits = model(inputs_embeds=points, **batch).logits
        torch.autograd.grad(logits[:, 1].sum(), points)

    results = {name: median_time(fn, repeats) for name, fn in
               (("engine", engine), ("captum", captum), ("old_tool", old_tool), ("floor", floor))}
    return {
        "tokens": tokens, "steps": steps, "repeats": repeats, "device": device,
        "torch_threads": torch.get_num_threads(), "seconds": results,
        "ratios": {"engine/captum": results["engine"] / results["captum"],
                   "engine/old_tool": results["engine"] / results["old_tool"],
                   "engine/floor": results["engine"] / results["floor"]},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[64])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokenizer", help="bert-base-uncased tokenizer directory (default: the MiniLM package's)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    rows = [run(n, args.steps, args.repeats, args.device, args.tokenizer) for n in args.tokens]
    print(f"bert-base shape, {args.steps} steps, {args.device}, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print(f"{'tokens':>6} {'engine s':>9} {'captum s':>9} {'old tool s':>10} {'floor s':>8} "
          f"{'eng/captum':>10} {'eng/old':>8} {'eng/floor':>9}")
    for row in rows:
        s, r = row["seconds"], row["ratios"]
        print(f"{row['tokens']:>6} {s['engine']:>9.3f} {s['captum']:>9.3f} {s['old_tool']:>10.3f} {s['floor']:>8.3f} "
              f"{r['engine/captum']:>10.3f} {r['engine/old_tool']:>8.3f} {r['engine/floor']:>9.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
