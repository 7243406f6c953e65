#!/usr/bin/env python3
"""Causal LM attribution: intgrads' ``attribute_lm`` against captum's ``LLMGradientAttribution`` +
``LayerIntegratedGradients`` on a Llama-shaped seeded model (about 100M parameters by default) on CPU.

One request: a prompt of ``--prompt`` tokens and ``--target`` teacher-forced target tokens, pad baseline (the
causal-LM default), score log-probability, the prompt interpolated and earlier target tokens real
(``interpolate="prompt"``: what captum's LLMGradientAttribution computes, its baseline keeps the target tokens).

- equal steps: both at ``--steps`` Gauss-Legendre points (captum: one LayerIntegratedGradients per target token,
  batch of those points); the largest difference of the (T, L) attributions relative to their largest value;
- equal accuracy: intgrads ``n_steps="auto"`` at tolerance 0.01 against captum at the fewest Gauss-Legendre
  steps of 4, 8, 12, 16, 24, 32 whose attributions are within 1% (relative L2, every target token) of a
  ``--reference-steps`` (64) reference;
- gradients per target token as rows of VJPs on the retained graph vs one batched VJP (``is_grads_batched``).

Each timing runs in a fresh subprocess (peak RSS from ``resource.getrusage``, wall from ``time.perf_counter``).

    PYTHONPATH=. python scripts/bench_llm.py [--layers 8 --hidden 768 --vocab 32000 --prompt 64 --target 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def build(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=args.hidden // 64, max_position_embeddings=512, tie_word_embeddings=False,
                         pad_token_id=1, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():   # a realistic regime: embeddings of std 0.3 (not 0.02), projections 1/sqrt(fan-in)
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.3 if "embed" in name else parameter.shape[-1] ** -0.5)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def texts(args):
    """The prompt and target texts: ``--prompt`` and ``--target`` tokens of English text under the byte-level BPE
    tokenizer of :mod:`intgrads.launcher.tiny_lm` (both sides tokenize the same text the same way)."""
    from intgrads.launcher.tiny_lm import TEXT, train_tokenizer

    tokenizer = train_tokenizer()
    ids = tokenizer(TEXT * 4, add_special_tokens=False)["input_ids"]
    prompt = tokenizer.decode(ids[:args.prompt])
    target = tokenizer.decode(ids[args.prompt:args.prompt + args.target])
    assert len(tokenizer(prompt)["input_ids"]) == args.prompt
    assert len(tokenizer(target, add_special_tokens=False)["input_ids"]) == args.target
    return tokenizer, prompt, target


def ours(args, model, texts_, n_steps, vjp="rows"):
    import torch

    from intgrads.engine.causal_answer import attribute_lm
    from intgrads.engine.causal_models import CausalLMBundle

    tokenizer, prompt, target = texts_
    bundle = CausalLMBundle(model=model, tokenizer=tokenizer, device=torch.device("cpu"))
    answer = attribute_lm(bundle, prompt, target=target, n_steps=n_steps,
                          baseline="pad", interpolate="prompt", vjp=vjp, chunk_tokens=args.chunk_tokens)
    return answer["token_attributions"], answer["n_steps"]


def captum(args, model, texts_, n_steps):
    import torch
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    tok, prompt, target = texts_
    lig = LayerIntegratedGradients(model, model.get_input_embeddings())
    llm = LLMGradientAttribution(lig, tok)
    inp = TextTokenInput(prompt, tok, baselines=tok.pad_token_id)   # the pad token at every prompt position
    target_ids = torch.tensor(tok(target, add_special_tokens=False)["input_ids"])
    result = llm.attribute(inp, target=target_ids, n_steps=n_steps, method="gausslegendre")
    return result.token_attr, n_steps   # (T, P): prompt positions only (captum's generated-token attributions apart)


def run_one(args):
    import torch

    torch.set_num_threads(args.threads)
    model = build(args)
    texts_ = texts(args)
    with torch.no_grad():   # warm up (one-time allocations), the same for both sides
        model(torch.ones(1, 8, dtype=torch.long))
    started = time.perf_counter()
    if args.run.startswith("ours"):
        attributions, steps = ours(args, model, texts_, "auto" if args.run == "ours-auto" else args.steps,
                                   vjp=args.vjp)
    else:
        attributions, steps = captum(args, model, texts_, args.steps)
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.save(attributions, args.save)
    print(json.dumps({"run": args.run, "steps": steps, "wall_s": wall, "peak_rss_mb": peak}))


def subprocess_run(args, run, steps, save, vjp="rows"):
    command = [sys.executable, __file__, "--one", run, "--steps", str(steps), "--save", save, "--vjp", vjp]
    for name in ("layers", "hidden", "vocab", "prompt", "target", "threads", "chunk_tokens"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare(ours_path, captum_path, prompt_len):
    import torch

    a, c = torch.load(ours_path, weights_only=True), torch.load(captum_path, weights_only=True)
    prompt_part = a[:, :prompt_len]   # captum attributes the prompt; with every position moving, ours adds the
    scale = prompt_part.abs().max()   # earlier target tokens' columns too (compared where both attribute)
    return float((prompt_part - c.float()).abs().max() / scale)


def relative_error(path, reference_path, prompt_len):
    import torch

    a = torch.load(path, weights_only=True)[:, :prompt_len].double()
    r = torch.load(reference_path, weights_only=True)[:, :prompt_len].double()
    return float(((a - r).norm(dim=1) / r.norm(dim=1)).max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--target", type=int, default=16)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-tokens", type=int, default=3200)
    parser.add_argument("--vjp", default="rows")
    parser.add_argument("--one", dest="run", default=None)
    parser.add_argument("--save", default=None)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-equal", action="store_true", help="only the equal-accuracy part")
    parser.add_argument("--reference-steps", type=int, default=64,
                        help="Gauss-Legendre steps of the reference (default 64: converged to ~1e-6 here)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.run:
        return run_one(args)
    import tempfile

    import torch

    model = build(args)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    del model
    print(f"Llama-shaped seeded model: {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}: {params:.0f}M "
          f"parameters; prompt {args.prompt}, target {args.target}, {args.threads} threads")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        def path(name):
            return f"{tmp}/{name}.pt"

        if not args.skip_equal:
            rows["ours"] = subprocess_run(args, "ours", args.steps, path("ours"))
            rows["ours-batched"] = subprocess_run(args, "ours", args.steps, path("ours-batched"), vjp="batched")
            rows["captum"] = subprocess_run(args, "captum", args.steps, path("captum"))
            rows["ours"]["max_rel_diff_vs_captum"] = compare(path("ours"), path("captum"), args.prompt)
            for name in ("ours", "ours-batched", "captum"):
                print(f"{name:14s} {args.steps} steps: {rows[name]['wall_s']:7.2f} s, peak RSS "
                      f"{rows[name]['peak_rss_mb']:7.0f} MB", flush=True)
            print(f"equal steps: captum / ours = {rows['captum']['wall_s'] / rows['ours']['wall_s']:.2f}x; largest "
                  f"difference {rows['ours']['max_rel_diff_vs_captum']:.2e} of scale", flush=True)
        if not args.skip_accuracy:
            reference = subprocess_run(args, "ours", args.reference_steps, path("reference"))
            rows["ours-auto"] = subprocess_run(args, "ours-auto", 0, path("auto"))
            rows["ours-auto"]["error"] = relative_error(path("auto"), path("reference"), args.prompt)
            for steps in (4, 8, 12, 16, 24, 32):
                row = subprocess_run(args, "captum", steps, path(f"captum{steps}"))
                row["error"] = relative_error(path(f"captum{steps}"), path("reference"), args.prompt)
                rows[f"captum-{steps}"] = row
                print(f"captum {steps:3d} steps: {row['wall_s']:7.2f} s, peak RSS {row['peak_rss_mb']:.0f} MB, error "
                      f"{row['error']:.2e}", flush=True)
                if row["error"] <= 0.01:
                    rows["captum-1%"] = row
                    break
            auto = rows["ours-auto"]
            print(f"ours auto: {auto['steps']} points, {auto['wall_s']:.2f} s, error {auto['error']:.2e}, peak RSS "
                  f"{auto['peak_rss_mb']:.0f} MB; reference {args.reference_steps} steps took "
                  f"{reference['wall_s']:.1f} s", flush=True)
            if "captum-1%" in rows:
                print(f"equal accuracy: captum / ours = {rows['captum-1%']['wall_s'] / auto['wall_s']:.2f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"params_m": params, "args": vars(args), "rows": rows}, handle, indent=1)
    torch.set_num_threads(1)


if __name__ == "__main__":
    main()
