"""Warnings that say when an answer is poor (intgrads.engine.diagnostics), against hand numbers and real cases:
a quadrature too coarse to converge, XLNet's gradient spike at a zero baseline, truncation, non-finite values."""

from __future__ import annotations

from pathlib import Path

import pytest

import intgrads
from intgrads.engine.diagnostics import NON_FINITE, answer_warnings

SENTENCE = "the movie was good but the ending felt rushed."
ROOT = Path(__file__).resolve().parents[2]


def _warnings(**overrides):
    values = dict(delta=0.0, f_input=1.0, f_baseline=0.0, step_maxima=[1.0, 1.2, 0.9], alphas=[0.1, 0.5, 0.9],
                  n_steps=3, finite=True, full_length=10, max_tokens=512)
    values.update(overrides)
    return answer_warnings(**values)


def test_thresholds_by_hand():
    assert _warnings() == []
    assert _warnings(delta=0.049) == []                       # 4.9% of F(x) - F(b) = 1
    (text,) = _warnings(delta=0.051)
    assert text.startswith("the integral did not converge: |convergence delta| = 0.051 is 5.1% of")
    (text,) = _warnings(delta=0.0504)                       # never "5% ... (warned above 5%)"
    assert "is 5.04% of" in text and "(warned above 5%)" in text
    (text,) = _warnings(delta=0.64)
    assert "is 64% of" in text
    assert _warnings(delta=0.0009, f_input=0.001) == []      # below the absolute floor
    (text,) = _warnings(step_maxima=[1e4, 1.0, 1.1], n_steps=3)
    assert "spike near alpha = 0.1 (step 0)" in text and "9.09e+03 x their median" in text   # median of 1.0, 1.1, 1e4
    assert _warnings(step_maxima=[99.0, 1.0, 1.0]) == []
    (text,) = _warnings(full_length=600, max_tokens=512)
    assert text == "truncated: the sentence has 600 tokens; its first 512 (special tokens kept) were attributed"
    assert _warnings(finite=False)[0].startswith(NON_FINITE)


def test_the_advice_names_what_works_and_what_was_not_used():
    """n_steps "auto" first; Gauss-Legendre only to an answer that used another rule; auto's own advice."""
    gauss = _warnings(delta=0.5, n_steps=20, method="gausslegendre")[0]
    assert gauss.endswith('; try n_steps "auto" (refined until the error is within its tolerance), or n_steps 100')
    assert "method gausslegendre" not in gauss
    riemann = _warnings(delta=0.5, n_steps=80, method="riemann_trapezoid")[0]
    assert riemann.endswith('try n_steps "auto" (refined until the error is within its tolerance), or method '
                            "gausslegendre, or n_steps 160")
    assert _warnings(delta=0.5, auto=True)[0].endswith("; raise max_steps")


def test_a_converged_answer_has_no_warnings(bundles):
    answer = intgrads.attribute(bundles["bert"], SENTENCE, n_steps=50)
    assert answer["warnings"] == [] and intgrads.summarize_answer(answer)["warnings"] == []


def test_too_few_steps_warn_that_the_integral_did_not_converge(bundles):
    answer = intgrads.attribute(bundles["bert"], SENTENCE, n_steps=2, method="riemann_left")
    # F(x) - F(b) = sum(IG) - delta, so the share the warning states is |delta| / |sum(IG) - delta|
    difference = float(answer["token_attributions"].sum()) - answer["convergence_delta"]
    assert abs(answer["convergence_delta"]) > 0.05 * abs(difference)
    (text,) = [w for w in answer["warnings"] if w.startswith("the integral did not converge")]
    assert 'try n_steps "auto"' in text and "or method gausslegendre" in text      # riemann_left was used
    answer = intgrads.attribute(bundles["bert"], SENTENCE, n_steps=2)              # Gauss-Legendre: not advised again
    assert all("method gausslegendre" not in w for w in answer["warnings"]), answer["warnings"]


def test_xlnet_with_a_zero_baseline_spikes_near_alpha_zero(bundles):
    zero = intgrads.attribute(bundles["xlnet"], SENTENCE, n_steps=50, baseline="zero")
    maxima = zero["intermediate_gradients"].abs().amax(dim=(1, 2))
    assert float(maxima[0]) > 100 * float(maxima.median())     # the case itself: gradients blow up near a = 0
    assert any("spike near alpha = 0.000" in w for w in zero["warnings"]), zero["warnings"]
    pad = intgrads.attribute(bundles["xlnet"], SENTENCE, n_steps=50, baseline="pad")
    assert not any("spike" in w for w in pad["warnings"]), pad["warnings"]


def test_truncation_is_said(bundles):
    answer = intgrads.attribute(bundles["bert"], SENTENCE, n_steps=4, max_tokens=5)
    assert answer["truncated"] and any(w.startswith("truncated: the sentence has 12 tokens") for w in answer["warnings"])


def test_the_server_refuses_non_finite_answers_with_422():
    from intgrads.serving.replies import refuse_non_finite
    from intgrads.serving.request import RequestError

    bad = {"warnings": [_warnings(finite=False)[0]]}
    refuse_non_finite({"warnings": []})
    with pytest.raises(RequestError) as raised:
        refuse_non_finite([{"warnings": []}, bad])
    assert raised.value.status == 422 and raised.value.message.startswith("sequences[1]: non-finite values")
