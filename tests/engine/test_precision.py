"""Reduced-precision compute (the ``precision`` option) against the float32 captum oracle, on the demo model.

The demo model is a real MiniLM encoder with a head fitted to a sentiment lexicon, so its activations are
in the regime real checkpoints put them in. float32 must stay exactly as it was; bfloat16 and float16 must
actually run in their arithmetic (their answers differ from float32 by far more than float32 rounding) and
stay within the bounds published in docs/benchmarks.md.
"""

from __future__ import annotations

import pytest
import torch

import intgrads

SENTENCES = (
    "The service was terrible and the food was awful.",
    "An absolutely delightful book, I enjoyed it.",
    "the movie was good but the ending felt rushed, and the music was far too loud for a quiet story like this one.",
)
N_STEPS = 16
TARGET = 1
# precision -> (max relative IG error, max |delta - captum's delta| / max(1, |F(x) - F(b)|)) against float32 captum.
# The convergence delta itself is mostly quadrature error at 16 steps (up to 0.044 here, in float32 too), so the
# reduced arithmetic's share is what is bounded.
BOUNDS = {"bfloat16": (0.05, 0.03), "float16": (0.005, 0.006)}
FLOAT32_ROUNDING = 1e-5   # the float32 engine's own distance to captum is ~1e-6


@pytest.fixture(scope="module")
def demo(demo_case):
    return demo_case.load()


@pytest.fixture(scope="module")
def oracle(demo_case):
    return {sentence: demo_case.captum(sentence, n_steps=N_STEPS, target=TARGET) for sentence in SENTENCES}


def _relative_error(value, reference) -> float:
    return float((value - reference).abs().max() / reference.abs().max())


def _top(attributions, k=5) -> set:
    return set(attributions.abs().topk(min(k, attributions.numel())).indices.tolist())


def test_precision_is_checked(demo):
    for bad in ("bf16", "float64", None, 16):
        with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, float16"):
            intgrads.attribute(demo, SENTENCES[0], n_steps=2, precision=bad)


def test_float32_is_the_default_and_unchanged(demo, oracle):
    default = intgrads.attribute(demo, SENTENCES[0], n_steps=N_STEPS, target=TARGET)
    explicit = intgrads.attribute(demo, SENTENCES[0], n_steps=N_STEPS, target=TARGET, precision="float32")
    assert default["precision"] == explicit["precision"] == "float32"
    for key in ("integrated_gradients", "intermediate_gradients", "logits"):
        assert torch.equal(default[key], explicit[key])
    assert _relative_error(default["integrated_gradients"], oracle[SENTENCES[0]]["ig"]) < FLOAT32_ROUNDING


@pytest.mark.parametrize("precision", sorted(BOUNDS))
@pytest.mark.parametrize("sentence", SENTENCES, ids=("negative", "positive", "long"))
def test_reduced_precision_error_is_bounded(demo, oracle, precision, sentence):
    reference = oracle[sentence]
    answer = intgrads.attribute(demo, sentence, n_steps=N_STEPS, target=TARGET, precision=precision)
    assert answer["precision"] == precision
    for key in ("integrated_gradients", "intermediate_gradients", "intermediates", "logits"):
        assert answer[key].dtype == torch.float32, key

    ig_error, delta_bound = BOUNDS[precision]
    error = _relative_error(answer["integrated_gradients"], reference["ig"])
    assert FLOAT32_ROUNDING < error < ig_error, f"{precision}: relative IG error {error:.2e}"
    span = float(reference["ig"].sum())   # F(x) - F(b) up to the quadrature error
    assert abs(answer["convergence_delta"] - reference["delta"]) < delta_bound * max(1.0, abs(span))
    assert _relative_error(answer["logits"], reference["logits"]) < ig_error
    assert len(_top(answer["token_attributions"]) & _top(reference["ig"].sum(-1).reshape(-1))) >= 4

