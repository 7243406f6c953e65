"""The engine's integrated gradients against captum 0.9 LayerIntegratedGradients (the oracle),
and the identities tying the answer's parts together.

Every method x every baseline, on the MiniLM BERT, the tiny XLNet and the tiny DistilBERT (hf)."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerIntegratedGradients
from captum.attr._utils.approximation_methods import approximation_parameters

import intgrads

METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
BASELINES = ("zero", "pad", "unk", "mask", "period", "rand-unif", "rand-norm")
MODELS = ("bert", "xlnet", "hf")
RTOL, ATOL = 1e-4, 1e-6
SENTENCE = "the movie was good but the ending felt rushed."
N_STEPS = 7
TARGET = 1

GRID = [(model, method, baseline, False) for model in MODELS for method in METHODS for baseline in BASELINES]
# keep_special_tokens=True: one case per model (plus a couple more, they are cheap)
KEEP = [(model, method, baseline, True) for model in MODELS
        for method, baseline in (("gausslegendre", "pad"), ("riemann_trapezoid", "rand-unif"), ("riemann_left", "zero"))]
ALL = GRID + KEEP


def _id(params):
    model, method, baseline, keep = params
    return f"{model}-{method}-{baseline}" + ("-keep" if keep else "")


@pytest.fixture(scope="module")
def results(cases, bundles):
    """(engine answer, captum result) per (model, method, baseline, keep), computed once."""
    memo = {}

    def get(model, method, baseline, keep):
        key = (model, method, baseline, keep)
        if key not in memo:
            answer = intgrads.attribute(bundles[model], SENTENCE, target=TARGET, n_steps=N_STEPS, method=method,
                                        baseline=baseline, keep_special_tokens=keep)
            oracle = cases[model].captum(SENTENCE, baseline=baseline, method=method, n_steps=N_STEPS,
                                         target=TARGET, keep=keep)
            memo[key] = (answer, oracle)
        return memo[key]

    return get


def test_public_constants():
    assert tuple(intgrads.METHODS) == METHODS
    assert tuple(intgrads.BASELINES) == BASELINES


@pytest.mark.parametrize("params", ALL, ids=[_id(p) for p in ALL])
def test_integrated_gradients_match_captum(results, params):
    answer, oracle = results(*params)
    ig = answer["integrated_gradients"]
    assert ig.dtype == torch.float32
    assert ig.shape == oracle["ig"].shape
    torch.testing.assert_close(ig, oracle["ig"], rtol=RTOL, atol=ATOL)
    # the comparison is not vacuous
    assert oracle["ig"].abs().max() > 1e-3


@pytest.mark.parametrize("params", ALL, ids=[_id(p) for p in ALL])
def test_answer_identities(results, params):
    """sum_k w_k g_k (x - b) = IG; intermediates = b + a_k (x - b) with captum's alphas; captum's
    step sizes; captum's convergence delta; the model's logits; what was used."""
    model, method, baseline, keep = params
    answer, oracle = results(*params)
    x, b = oracle["x"][0], oracle["b"][0]
    seq, hidden = x.shape
    step_sizes_fn, alphas_fn = approximation_parameters(method)
    steps = torch.tensor(step_sizes_fn(N_STEPS), dtype=torch.float32)
    alphas = torch.tensor(alphas_fn(N_STEPS), dtype=torch.float32)

    assert answer["step_sizes"].shape == (N_STEPS, 1) and answer["step_sizes"].dtype == torch.float32
    torch.testing.assert_close(answer["step_sizes"].view(-1), steps, rtol=1e-6, atol=1e-7)

    inter = answer["intermediates"]
    assert inter.shape == (N_STEPS, seq, hidden) and inter.dtype == torch.float32
    expected = b + alphas.view(-1, 1, 1) * (x - b)
    torch.testing.assert_close(inter, expected, rtol=1e-5, atol=1e-6)

    grads = answer["intermediate_gradients"]
    assert grads.shape == (N_STEPS, seq, hidden) and grads.dtype == torch.float32
    summed = (answer["step_sizes"].view(-1, 1, 1) * grads).sum(0) * (x - b)
    torch.testing.assert_close(summed.unsqueeze(0), answer["integrated_gradients"], rtol=0, atol=1e-5)

    assert isinstance(answer["convergence_delta"], float)
    assert answer["convergence_delta"] == pytest.approx(oracle["delta"], abs=1e-4)

    assert answer["logits"].shape == (1, 2) and answer["logits"].dtype == torch.float32
    torch.testing.assert_close(answer["logits"], oracle["logits"], rtol=1e-5, atol=1e-5)

    assert answer["target"] == TARGET and answer["n_steps"] == N_STEPS
    assert answer["method"] == method and answer["baseline"] == baseline
    assert answer["keep_special_tokens"] is keep and answer["truncated"] is False


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", ("gausslegendre", "riemann_trapezoid"))
def test_intermediate_gradients_are_the_layer_gradients(cases, results, model, method):
    """g_k = d logit_target / d(layer output) at z_k = intermediates[k], from the reference model."""
    case = cases[model]
    answer, oracle = results(model, method, "period", False)
    for k in (0, N_STEPS // 2, N_STEPS - 1):
        expected = case.layer_gradient(oracle["encoded"], answer["intermediates"][k:k + 1], TARGET)[0]
        torch.testing.assert_close(answer["intermediate_gradients"][k], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("baseline", ("pad", "unk", "mask", "period"))
@pytest.mark.parametrize("keep", (False, True))
def test_bert_id_baselines_match_captum_on_input_ids(bert_case, bundles, baseline, keep):
    """captum LIG on input ids with hand-built baseline ids (every position that token; [CLS]/[SEP]
    kept only with keep_special_tokens) agrees with the engine."""
    case = bert_case
    encoded = case.encode(SENTENCE)
    ids = encoded["input_ids"]
    token = {"pad": "[PAD]", "unk": "[UNK]", "mask": "[MASK]", "period": "."}[baseline]
    token_id = case.tokenizer.convert_tokens_to_ids(token)
    baseline_ids = torch.full_like(ids, token_id)
    if keep:
        baseline_ids[0, 0] = case.tokenizer.cls_token_id
        baseline_ids[0, -1] = case.tokenizer.sep_token_id
        assert ids[0, 0] == case.tokenizer.cls_token_id and ids[0, -1] == case.tokenizer.sep_token_id

    def forward(input_ids, token_type_ids, attention_mask):
        return case.model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask).logits

    lig = LayerIntegratedGradients(forward, case.model.bert.embeddings)
    expected, delta = lig.attribute(ids, baselines=baseline_ids, target=TARGET, n_steps=N_STEPS,
                                    additional_forward_args=(encoded["token_type_ids"], encoded["attention_mask"]),
                                    return_convergence_delta=True)
    answer = intgrads.attribute(bundles["bert"], SENTENCE, n_steps=N_STEPS, baseline=baseline,
                                keep_special_tokens=keep)
    torch.testing.assert_close(answer["integrated_gradients"], expected, rtol=RTOL, atol=ATOL)
    assert answer["convergence_delta"] == pytest.approx(float(delta), abs=1e-4)


def test_default_options_match_captum(bert_case, bundles):
    """Defaults: target 1, 50 Gauss-Legendre steps, zero baseline, specials not kept."""
    answer = intgrads.attribute(bundles["bert"], SENTENCE)
    oracle = bert_case.captum(SENTENCE, n_steps=50)
    assert (answer["target"], answer["n_steps"], answer["method"], answer["baseline"]) == (1, 50, "gausslegendre",
                                                                                           "zero")
    assert answer["keep_special_tokens"] is False
    torch.testing.assert_close(answer["integrated_gradients"], oracle["ig"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("model", MODELS)
def test_target_zero_matches_captum(cases, bundles, model):
    answer = intgrads.attribute(bundles[model], SENTENCE, target=0, n_steps=5, baseline="mask")
    oracle = cases[model].captum(SENTENCE, target=0, n_steps=5, baseline="mask")
    assert answer["target"] == 0
    torch.testing.assert_close(answer["integrated_gradients"], oracle["ig"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("model", MODELS)
def test_one_gauss_legendre_step_matches_captum(cases, bundles, model):
    answer = intgrads.attribute(bundles[model], SENTENCE, n_steps=1)
    oracle = cases[model].captum(SENTENCE, n_steps=1)
    assert answer["intermediate_gradients"].shape[0] == 1
    torch.testing.assert_close(answer["integrated_gradients"], oracle["ig"], rtol=RTOL, atol=ATOL)


def test_random_baselines_are_fixed_vectors(cases):
    from intgrads.engine.baselines import random_vector

    for kind in ("rand-unif", "rand-norm"):
        first, second = random_vector(kind, 384), random_vector(kind, 384)
        assert first.dtype == torch.float32 and first.shape == (384,)
        assert torch.equal(first, second)
    unif = random_vector("rand-unif", 4096)
    assert 0 <= unif.min() and unif.max() < 1 and abs(float(unif.mean()) - 0.5) < 0.05
    norm = random_vector("rand-norm", 4096)
    assert norm.min() < 0 and abs(float(norm.mean())) < 0.1 and abs(float(norm.std()) - 1) < 0.1


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("baseline", ("rand-unif", "rand-norm", "period"))
def test_baseline_is_one_word_vector_at_every_position(cases, results, model, baseline):
    """For the XLNet layer (the word vectors themselves) the baseline is visible directly: the first
    Riemann-left intermediate is b; every position holds the same vector (specials included)."""
    answer, oracle = results(model, "riemann_left", baseline, False)
    b = answer["intermediates"][0]
    torch.testing.assert_close(b, oracle["b"][0], rtol=1e-5, atol=1e-6)
    if model == "xlnet":
        assert torch.equal(b, b[:1].expand_as(b))
