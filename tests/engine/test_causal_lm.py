"""Causal LMs against independent computations: captum 0.9 ``LayerIntegratedGradients`` on the token embeddings,
one call per target token on prompt + target[:t] scored at its last position; a plain greedy loop for generation;
plain forward passes for the scores.

Tiny seeded Llama, Qwen2, GPT-2 and Gemma (2 layers, hidden 64, weights of realistic size) with a byte-level BPE
tokenizer trained here, written by save_pretrained and loaded through ``load_model("hf", DIR)``.
"""

from __future__ import annotations

import pytest
import torch

from intgrads.engine.causal_answer import attribute_lm
from intgrads.engine.causal_models import CAUSAL_LM
from intgrads.engine.models import load_model
from intgrads.launcher.tiny_lm import KINDS, build_tiny_lm

PROMPT = "The movie was good but the"
TARGET = " ending felt rushed"
STEPS = 8
TOL = 1e-4


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal")
    return {kind: load_model("hf", build_tiny_lm(root / kind, kind, seed=3)) for kind in KINDS}


def captum_row(bundle, ids, target_id, n_steps, *, baseline_ids=None, contrast_id=None, score="logprob"):
    """captum's attribution of one target token after ``ids`` (1-D), summed over the hidden dimension."""
    from captum.attr import LayerIntegratedGradients

    model = bundle.model

    def forward(inputs):
        logits = model(inputs).logits[:, -1].float()
        values = logits.log_softmax(-1) if score != "logit" else logits
        picked = values[:, target_id]
        if score == "prob":
            picked = picked.exp()
        if contrast_id is not None:
            picked = picked - values[:, contrast_id]
        return picked

    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    inputs = ids.view(1, -1)
    base = (torch.full_like(inputs, bundle.tokenizer.pad_token_id) if baseline_ids is None
            else baseline_ids.view(1, -1))
    return lig.attribute(inputs, base, n_steps=n_steps, method="gausslegendre").sum(-1)[0]


def assert_rows_match(answer, oracle_rows):
    P = answer["prompt_length"]
    rows = answer["token_attributions"]
    for t, expected in enumerate(oracle_rows):
        row = rows[t]
        scale = float(expected.abs().max())
        assert float((row[:P + t] - expected).abs().max()) <= TOL * scale, t
        assert not row[P + t:].any(), "positions at or after the target token's own are 0"


@pytest.mark.parametrize("kind", KINDS)
def test_every_target_token_equals_captum(bundles, kind):
    bundle = bundles[kind]
    assert bundle.kind == CAUSAL_LM
    answer = attribute_lm(bundle, PROMPT, target=TARGET, n_steps=STEPS)
    ids, targets = answer["input_ids"][0], answer["target_ids"]
    T, L = len(targets), len(ids)
    assert answer["token_attributions"].shape == (T, L) and answer["step_token_attributions"].shape == (T, STEPS, L)
    assert answer["step_outputs"].shape == (T, STEPS) and answer["convergence_delta"].shape == (T,)
    assert L == answer["prompt_length"] + T - 1 and answer["generated"] is False
    assert_rows_match(answer, [captum_row(bundle, ids[:answer["prompt_length"] + t], int(targets[t]), STEPS)
                               for t in range(T)])
    # the scores at x: plain forward passes
    with torch.no_grad():
        logprobs = bundle.model(torch.cat([ids, targets[-1:]]).view(1, -1)).logits[0].log_softmax(-1)
    P = answer["prompt_length"]
    expected = logprobs[P - 1:P - 1 + T].gather(1, targets.view(-1, 1)).view(-1)
    torch.testing.assert_close(answer["scores"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_interpolate_prompt_keeps_target_tokens_real(bundles, kind):
    bundle = bundles[kind]
    answer = attribute_lm(bundle, PROMPT, target=TARGET, n_steps=STEPS, interpolate="prompt")
    ids, targets, P = answer["input_ids"][0], answer["target_ids"], answer["prompt_length"]
    pad = bundle.tokenizer.pad_token_id
    oracle = []
    for t in range(len(targets)):
        prefix = ids[:P + t]
        base = prefix.clone()
        base[:P] = pad
        oracle.append(captum_row(bundle, prefix, int(targets[t]), STEPS, baseline_ids=base))
    assert_rows_match(answer, oracle)
    assert not answer["token_attributions"][:, P:].any()


def test_contrast_and_scores(bundles):
    bundle = bundles["qwen2"]
    answer = attribute_lm(bundle, PROMPT, target=" good", contrast=" bad", n_steps=STEPS)
    ids, P = answer["input_ids"][0], answer["prompt_length"]
    tok = bundle.tokenizer
    (target_id,), (contrast_id,) = (tok(" good", add_special_tokens=False)["input_ids"],
                                    tok(" bad", add_special_tokens=False)["input_ids"])
    assert_rows_match(answer, [captum_row(bundle, ids[:P], target_id, STEPS, contrast_id=contrast_id)])
    for score in ("prob", "logit"):
        answer = attribute_lm(bundle, PROMPT, target=" good", n_steps=STEPS, score=score)
        assert_rows_match(answer, [captum_row(bundle, ids[:P], target_id, STEPS, score=score)])
    with pytest.raises(ValueError, match="as many tokens"):
        attribute_lm(bundle, PROMPT, target=" good", contrast=" ending felt rushed")
    with pytest.raises(ValueError, match="go with n_steps"):   # as for a classifier: auto's settings with auto only
        attribute_lm(bundle, PROMPT, target=" good", n_steps=STEPS, tolerance=0.01)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_generation_is_greedy(bundles, kind):
    bundle = bundles[kind]
    answer = attribute_lm(bundle, PROMPT, max_new_tokens=5, n_steps=4)
    ids = torch.tensor(bundle.tokenizer(PROMPT)["input_ids"])
    eos = bundle.model.config.eos_token_id
    greedy = []
    with torch.no_grad():   # a plain loop: the whole sequence again each step, no cache
        for _ in range(5):
            token = int(bundle.model(ids.view(1, -1)).logits[0, -1].argmax())
            greedy.append(token)
            ids = torch.cat([ids, torch.tensor([token])])
            if token == eos:
                break
    assert answer["generated"] is True and answer["target_ids"].tolist() == greedy
    assert answer["token_attributions"].shape[0] == len(greedy)


def test_chat_template(bundles):
    bundle = bundles["llama"]
    messages = [{"role": "user", "content": "Is the movie good?"}]
    answer = attribute_lm(bundle, messages=messages, target=" yes", n_steps=STEPS)
    rendered = "<|user|>Is the movie good?\n<|assistant|>"   # the fixture's template, written out by hand
    expected = bundle.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert answer["input_ids"][0].tolist() == expected
    ids = answer["input_ids"][0]
    assert_rows_match(answer, [captum_row(bundle, ids, int(answer["target_ids"][0]), STEPS)])
    saved, bundle.tokenizer.chat_template = bundle.tokenizer.chat_template, None
    try:
        with pytest.raises(ValueError, match="chat template"):
            attribute_lm(bundle, messages=messages, target=" yes")
    finally:
        bundle.tokenizer.chat_template = saved


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_completeness_per_token(bundles, kind):
    bundle = bundles[kind]
    answer = attribute_lm(bundle, PROMPT, target=TARGET, n_steps=64)
    ids, targets, P = answer["input_ids"][0], answer["target_ids"], answer["prompt_length"]
    pad = bundle.tokenizer.pad_token_id
    with torch.no_grad():   # F(b): every position the pad token
        logprobs = bundle.model(torch.full((1, len(ids)), pad)).logits[0].log_softmax(-1)
    baseline = logprobs[P - 1:P - 1 + len(targets)].gather(1, targets.view(-1, 1)).view(-1)
    torch.testing.assert_close(answer["baseline_scores"], baseline, atol=1e-5, rtol=1e-5)
    change = answer["scores"] - baseline
    sums = answer["token_attributions"].sum(dim=1)
    assert ((sums - change).abs() <= 1e-3 * change.abs() + 1e-5).all()
    torch.testing.assert_close(answer["convergence_delta"], sums - (answer["scores"] - answer["baseline_scores"]))
    assert answer["warnings"] == [[] for _ in targets]


def test_auto_within_tolerance(bundles):
    bundle = bundles["llama"]
    reference = attribute_lm(bundle, PROMPT, target=TARGET, n_steps=128)["token_attributions"]
    answer = attribute_lm(bundle, PROMPT, target=TARGET, n_steps="auto", tolerance=0.01)
    assert answer["method"] == "adaptive" and answer["n_steps"] == len(answer["alphas"]) < 128
    error = (answer["token_attributions"] - reference).norm(dim=1) / reference.norm(dim=1)
    assert (error <= 0.01).all(), error
    change = (answer["scores"] - answer["baseline_scores"]).abs()
    assert (answer["convergence_delta"].abs() <= 0.01 * change).all()
    assert answer["warnings"] == [[] for _ in range(len(reference))]


def test_zero_baseline_corner_warns(bundles):
    """A pre-norm model from the zero vector: F jumps at alpha = 0 (the first norm of 0 is 0, of any a x > 0 is
    x / rms(x)), so no rule converges; auto ends capped and every unconverged token says so."""
    answer = attribute_lm(bundles["llama"], PROMPT, target=" ending", n_steps="auto", baseline="zero", max_steps=64)
    assert answer["warnings"][0] and any("zero baseline" in w for w in answer["warnings"][0])


def test_full_tensors_chunks_and_batched_vjps(bundles):
    bundle = bundles["gpt2"]
    full = attribute_lm(bundle, PROMPT, target=TARGET, n_steps=4, idgi=True,
                        outputs=["integrated_gradients", "intermediate_gradients", "intermediates"])
    T, L = full["token_attributions"].shape
    H = bundle.model.config.hidden_size
    assert full["integrated_gradients"].shape == (T, L, H) and full["intermediates"].shape == (4, L, H)
    assert full["intermediate_gradients"].shape == (T, 4, L, H)
    torch.testing.assert_close(full["integrated_gradients"].sum(-1), full["token_attributions"], atol=1e-6, rtol=1e-5)
    x, b = full["intermediates"][-1], full["intermediates"][0]   # z at the last and first points
    difference = (x - b) / (full["alphas"][-1] - full["alphas"][0])
    steps = full["step_sizes"].view(1, -1, 1) * (full["intermediate_gradients"] * difference).sum(-1)
    torch.testing.assert_close(steps, full["step_token_attributions"], atol=1e-5, rtol=1e-4)
    idgi = full["idgi_token_attributions"]
    torch.testing.assert_close(idgi.sum(1), full["step_outputs"][:, -1] - full["step_outputs"][:, 0],
                               atol=1e-5, rtol=1e-4)
    for variant in ({"internal_batch_size": 3}, {"vjp": "batched"}):
        other = attribute_lm(bundle, PROMPT, target=TARGET, n_steps=4, **variant)
        torch.testing.assert_close(other["token_attributions"], full["token_attributions"], atol=1e-6, rtol=1e-5)
        assert "integrated_gradients" not in other


def test_refusals(bundles):
    bundle = bundles["llama"]
    for kwargs, message in (({"messages": [{"role": "user", "content": "hi"}]}, "either sequence"),
                            ({"score": "nll"}, "score must be"), ({"interpolate": "none"}, "interpolate must"),
                            ({"baseline": "bogus"}, "baseline must"), ({"target": ""}, "target must be text"),
                            ({"outputs": ["logits"]}, "outputs of a causal LM"),
                            ({"max_new_tokens": 0, "target": None}, "max_new_tokens"),
                            ({"target": " word" * 300}, "tokens, more than")):
        arguments = {"target": TARGET, **kwargs}
        with pytest.raises(ValueError, match=message):
            attribute_lm(bundle, PROMPT, **arguments)
    from intgrads.engine.attribution import attribute

    with pytest.raises(ValueError, match="attribute_lm"):
        attribute(bundle, PROMPT)


def test_reduced_precision_and_the_deadline(bundles):
    import time

    from intgrads.engine.budget import DeadlineExceeded

    bundle = bundles["llama"]
    exact = attribute_lm(bundle, PROMPT, target=" ending", n_steps=STEPS)
    reduced = attribute_lm(bundle, PROMPT, target=" ending", n_steps=STEPS, precision="bfloat16")
    assert reduced["precision"] == "bfloat16" and reduced["token_attributions"].dtype == torch.float32
    scale = float(exact["token_attributions"].abs().max())
    assert float((reduced["token_attributions"] - exact["token_attributions"]).abs().max()) <= 0.1 * scale
    with pytest.raises(DeadlineExceeded):
        attribute_lm(bundle, PROMPT, target=" ending", n_steps=STEPS, deadline=time.monotonic() - 1)
