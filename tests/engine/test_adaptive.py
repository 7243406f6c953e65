"""n_steps="auto": the nested rules against closed-form integrals, the refinement's stopping rule on integrands
with known integrals, and the engine's auto answers against captum with a fine fixed rule and plain autograd.

Also the keys every answer gained (alphas, step_outputs, the evaluation counts) and IDGI against a hand loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import intgrads
from intgrads.answer.codec import prepare_answer
from intgrads.answer.keys import COMPACT_OUTPUTS
from intgrads.answer.rebuild import rebuild_intermediates
from intgrads.engine import adaptive
from intgrads.engine.budget import DeadlineExceeded

SENTENCE = "the movie was good but the ending felt rushed."
OTHER = "An absolutely delightful book, I enjoyed it."
TARGET = 1


# ------------------------------------------------------------------------------------------------ the rules

def test_nested_rules_are_exact_to_their_degree_and_nested():
    """Level l integrates the Legendre polynomials P_j(2u - 1) over [0, 1] (1 for j = 0, else 0) exactly up to
    degree 1, 5, 11, 23, 47, 95 (and, below the last, no further); each level's points are among the next one's,
    bitwise."""
    rules = adaptive.nested_rules()
    for level, (points, weights, new) in enumerate(rules):
        assert len(points) == adaptive.POINTS[level] and min(weights) > 0 and list(points) == sorted(points)
        values = np.polynomial.legendre.legvander(2 * np.array(points) - 1, 100).T @ np.array(weights)
        degree = (1, 5, 11, 23, 47, 95)[level]
        exact = np.zeros(101)
        exact[0] = 1.0
        assert np.abs(values - exact)[:degree + 1].max() < 1e-11, level   # float32 alphas need far less
        if level < 5:
            assert abs(values[degree + 1]) > 1e-9, level    # the next even degree is not exact
        if level:
            assert set(rules[level - 1][0]) | set(new) == set(points)
    # published nodes (on [-1, 1]): Kronrod 7 (Gauss 3 extended) and Patterson 15
    kronrod = sorted(2 * np.array(rules[2][0]) - 1)[4:]
    np.testing.assert_allclose(kronrod, [0.4342437493468025580, 0.7745966692414833770, 0.9604912687080202834],
                               rtol=0, atol=1e-14)
    assert abs(max(rules[3][0]) * 2 - 1 - 0.9938319632127550222) < 1e-14


# ------------------------------------------------------------------------------ the refinement, pure math

def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _drive(integrand, exact, tolerance=0.01, max_steps=128):
    """Run a Refinement on ``integrand(alpha) -> T values`` whose integrals over [0, 1] are ``exact``."""
    refinement = adaptive.Refinement(float(np.sum(exact)), 0.0, tolerance, max_steps)
    while alphas := refinement.request():
        refinement.receive(alphas, [integrand(alpha) for alpha in alphas])
    points, weights = refinement.rule()
    result = np.array(weights) @ np.array([integrand(alpha) for alpha in points])
    return refinement, float(np.linalg.norm(result - exact) / np.linalg.norm(exact)), points


@pytest.mark.parametrize("tolerance", (0.05, 0.01, 0.001))
def test_refinement_meets_its_tolerance_on_known_integrals(tolerance):
    """Tokens whose integrands are steep sigmoid steps at various places: a_t = c k s(k(a - m)) (1 - s(k(a - m))),
    whose integral over [0, 1] is c (s(k(1 - m)) - s(-k m))."""
    c, k, m = np.array([1.0, -0.7, 0.4, 0.25]), np.array([30.0, 12.0, 45.0, 8.0]), np.array([0.3, 0.45, 0.2, 0.7])

    def integrand(alpha):
        s = _sigmoid(k * (alpha - m))
        return c * k * s * (1 - s)

    exact = c * (_sigmoid(k * (1 - m)) - _sigmoid(-k * m))
    refinement, error, points = _drive(integrand, exact, tolerance)
    assert refinement.status == "converged" and refinement.warning() is None
    assert error <= tolerance and refinement.r <= tolerance
    assert len(points) == refinement.steps == len(set(points)) and points == sorted(points)
    assert refinement.steps < {0.05: 60, 0.01: 80, 0.001: 120}[tolerance]


def test_a_small_r_does_not_stop_it_while_the_tokens_are_off():
    """Two tokens whose errors cancel in the sum (a_1 + a_2 = 1 exactly, so r = 0 from the start): the estimate
    of the tokens' own error keeps refining until they are right."""
    k, m = 60.0, 0.37

    def integrand(alpha):
        bump = k * _sigmoid(k * (alpha - m)) * (1 - _sigmoid(k * (alpha - m)))
        return np.array([bump, 1.0 - bump])

    step = _sigmoid(k * (1 - m)) - _sigmoid(-k * m)
    exact = np.array([step, 1.0 - step])
    first = adaptive.Refinement(1.0, 0.0, 0.01, adaptive.MIN_MAX_STEPS)   # the 9 starting points only
    first.receive(first.request(), [integrand(alpha) for alpha in first.request()])
    points, weights = first.rule()
    coarse = np.array(weights) @ np.array([integrand(alpha) for alpha in points])
    assert first.r < 1e-9 and np.linalg.norm(coarse - exact) / np.linalg.norm(exact) > 0.02   # r misleads here
    assert first.status == "capped" and "r = " in first.warning() and "max_steps 9" in first.warning()
    refinement, error, _ = _drive(integrand, exact)
    assert refinement.status == "converged" and error <= 0.01 and refinement.steps > 9


def test_non_finite_values_end_the_refinement():
    refinement = adaptive.Refinement(1.0, 0.0)
    alphas = refinement.request()
    refinement.receive(alphas, [[math.nan] if alpha < 0.3 else [1.0] for alpha in alphas])
    assert refinement.status == "non-finite" and refinement.request() == []


# ------------------------------------------------------------------------------------- the engine, oracles

@pytest.fixture(scope="module")
def auto_answers(bundles):
    return {baseline: intgrads.attribute(bundles["bert"], SENTENCE, target=TARGET, n_steps="auto", baseline=baseline,
                                         idgi=True)
            for baseline in ("zero", "pad")}


@pytest.mark.parametrize("baseline", ("zero", "pad"))
def test_auto_is_within_its_tolerance_of_a_fine_captum_reference(cases, auto_answers, baseline):
    """captum's LayerIntegratedGradients with 128 Gauss-Legendre steps is the reference: the auto answer's token
    attributions are within 1% (relative L2), and its sum within 1% of the reference's F(x) - F(b)."""
    answer = auto_answers[baseline]
    oracle = cases["bert"].captum(SENTENCE, baseline=baseline, n_steps=128, target=TARGET)
    reference = oracle["ig"][0].sum(-1).double()
    difference = float(oracle["ig"].sum()) - oracle["delta"]            # F(x) - F(b)
    tokens = answer["token_attributions"].double()
    assert float((tokens - reference).norm() / reference.norm()) <= 0.01
    assert abs(float(tokens.sum()) - difference) <= 0.01 * abs(difference)
    assert abs(answer["convergence_delta"]) <= 0.01 * abs(difference)
    assert answer["warnings"] == []


def test_auto_answer_identities_against_plain_autograd(cases, auto_answers):
    """Every key of an auto answer against the reference model: x and b from captum's layer, each point's
    gradient and output by plain autograd, IG = (x - b) sum_k w_k g_k over the answer's own points."""
    case, answer = cases["bert"], auto_answers["pad"]
    oracle = case.captum(SENTENCE, baseline="pad", n_steps=2, target=TARGET)
    x, b = oracle["x"][0], oracle["b"][0]
    steps = answer["n_steps"]
    alphas = answer["alphas"]
    assert answer["method"] == "adaptive" and answer["gradient_evaluations"] == steps
    assert answer["forward_evaluations"] == 0 and (answer["tolerance"], answer["max_steps"]) == (0.01, 128)
    assert alphas.dtype == torch.float32 and alphas.shape == (steps,) and adaptive.MIN_MAX_STEPS <= steps <= 128
    assert bool((alphas[1:] > alphas[:-1]).all()) and 0 < float(alphas[0]) and float(alphas[-1]) < 1
    for key in ("intermediate_gradients", "intermediates"):
        assert answer[key].shape == (steps,) + tuple(x.shape), key
    assert answer["step_sizes"].shape == (steps, 1) and answer["step_outputs"].shape == (steps,)
    assert float(answer["step_sizes"].double().sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(answer["intermediates"], b + alphas.view(-1, 1, 1) * (x - b), rtol=1e-5, atol=1e-6)
    for k in range(0, steps, 4):
        output, grad = case.layer_output_and_gradient(oracle["encoded"], answer["intermediates"][k:k + 1], TARGET)
        assert float(answer["step_outputs"][k]) == pytest.approx(output, abs=1e-5)
        torch.testing.assert_close(answer["intermediate_gradients"][k], grad[0], rtol=1e-4, atol=1e-6)
    total = (answer["step_sizes"].double().view(-1, 1, 1) * answer["intermediate_gradients"].double()).sum(0)
    torch.testing.assert_close(answer["integrated_gradients"][0].double(), (x - b).double() * total,
                               rtol=1e-4, atol=1e-7)


def test_idgi_against_a_hand_loop(cases, bundles, auto_answers):
    """IDGI (Yang et al., CVPR 2023) over the answer's points, recomputed by hand: gradients and outputs by plain
    autograd on the reference model, the formula in float64. For a fixed rule and for an auto answer."""
    case = cases["bert"]
    fixed = intgrads.attribute(bundles["bert"], SENTENCE, target=TARGET, n_steps=6, method="riemann_trapezoid",
                               baseline="zero", idgi=True)
    for answer in (fixed, auto_answers["zero"]):
        encoded = case.encode(SENTENCE)
        outputs, squares = [], []
        for k in range(answer["n_steps"]):
            output, grad = case.layer_output_and_gradient(encoded, answer["intermediates"][k:k + 1], TARGET)
            outputs.append(output)
            squares.append(grad[0].double() ** 2)
        expected = sum(squares[i] * (outputs[i + 1] - outputs[i]) / squares[i].sum()
                       for i in range(len(outputs) - 1))
        idgi = answer["idgi"][0].double()
        scale = float(expected.abs().max())
        assert scale > 1e-4 and answer["idgi"].dtype == torch.float32 and answer["idgi"].shape[0] == 1
        torch.testing.assert_close(idgi, expected, rtol=0, atol=1e-3 * scale)
        torch.testing.assert_close(answer["idgi_token_attributions"].double(), idgi.sum(-1), rtol=1e-6, atol=1e-9)
        assert float(idgi.sum()) == pytest.approx(outputs[-1] - outputs[0], abs=1e-4 * abs(outputs[-1] - outputs[0]))
    assert "idgi" not in intgrads.attribute(bundles["bert"], SENTENCE, n_steps=3)


def test_fixed_answers_gain_only_small_keys(cases, bundles):
    """A fixed rule's answer: its alphas (float32 of the rule's), one gradient evaluation per point, no forward-only
    pass, and F at each point; no auto settings."""
    answer = intgrads.attribute(bundles["bert"], SENTENCE, target=TARGET, n_steps=5, method="riemann_middle")
    _, alphas = intgrads.step_sizes_and_alphas("riemann_middle", 5)
    assert torch.equal(answer["alphas"], torch.tensor(alphas, dtype=torch.float32))
    assert (answer["gradient_evaluations"], answer["forward_evaluations"], answer["n_steps"]) == (5, 0, 5)
    assert "tolerance" not in answer and "max_steps" not in answer and answer["method"] == "riemann_middle"
    encoded = cases["bert"].encode(SENTENCE)
    for k in (0, 4):
        output, _ = cases["bert"].layer_output_and_gradient(encoded, answer["intermediates"][k:k + 1], TARGET)
        assert float(answer["step_outputs"][k]) == pytest.approx(output, abs=1e-5)


# ------------------------------------------------------------------------------------- the engine, mechanics

def test_sentences_of_one_call_stop_on_their_own(bundles):
    """A list is refined sentence by sentence inside shared passes: each answer equals the sentence's alone, the
    counts may differ, and chunking (internal_batch_size) changes nothing but rounding."""
    sentences = [SENTENCE, OTHER, "awful."]
    together = intgrads.attribute(bundles["bert"], sentences, n_steps="auto", baseline="pad", tolerance=0.001)
    chunked = intgrads.attribute(bundles["bert"], sentences, n_steps="auto", baseline="pad", tolerance=0.001,
                                 internal_batch_size=5)
    assert len({answer["n_steps"] for answer in together}) > 1
    for sentence, answer, other in zip(sentences, together, chunked):
        alone = intgrads.attribute(bundles["bert"], sentence, n_steps="auto", baseline="pad", tolerance=0.001)
        for expected in (alone, other):
            assert torch.equal(answer["alphas"], expected["alphas"])
            torch.testing.assert_close(answer["integrated_gradients"], expected["integrated_gradients"],
                                       rtol=1e-4, atol=1e-6)


def test_the_cap_ends_with_a_warning_and_the_deadline_still_holds(bundles):
    capped = intgrads.attribute(bundles["bert"], OTHER, n_steps="auto", baseline="pad", tolerance=1e-6, max_steps=20)
    assert capped["n_steps"] <= 20 and capped["gradient_evaluations"] == capped["n_steps"]
    assert any("n_steps auto stopped at" in text and "r = " in text for text in capped["warnings"])
    with pytest.raises(DeadlineExceeded):
        intgrads.attribute(bundles["bert"], SENTENCE, n_steps="auto", deadline=0.0)


@pytest.mark.parametrize("model", ("xlnet", "hf"))
def test_auto_on_the_other_families(bundles, model):
    answer = intgrads.attribute(bundles[model], SENTENCE, n_steps="auto", baseline="pad")
    steps = answer["n_steps"]
    assert answer["intermediate_gradients"].shape[0] == steps == answer["alphas"].shape[0]
    difference = float(answer["token_attributions"].sum()) - answer["convergence_delta"]
    converged = abs(answer["convergence_delta"]) <= 0.01 * max(abs(difference), adaptive.R_FLOOR)
    assert converged or any("n_steps auto stopped" in text for text in answer["warnings"])


@pytest.mark.parametrize("options, words", [
    (dict(n_steps="automatic"), "n_steps must be an integer"), (dict(n_steps="auto", tolerance=0), "tolerance"),
    (dict(n_steps="auto", tolerance=1), "tolerance"), (dict(n_steps="auto", tolerance=float("nan")), "tolerance"),
    (dict(n_steps="auto", tolerance="0.1"), "tolerance"), (dict(n_steps="auto", tolerance=True), "tolerance"),
    (dict(n_steps="auto", max_steps=8), "max_steps must be an integer from 9"),
    (dict(n_steps="auto", max_steps=1001), "max_steps"), (dict(n_steps="auto", max_steps=20.0), "max_steps"),
])
def test_bad_auto_options(bundles, options, words):
    with pytest.raises(ValueError, match=words):
        intgrads.attribute(bundles["bert"], SENTENCE, **options)


def test_compact_auto_answer_rebuilds_bitwise_and_idgi_outputs(bundles, auto_answers):
    """x and b instead of the intermediates: rebuilt at the answer's own alphas, the same keys in the same order
    and the same bits as the whole answer. Naming "idgi" brings its token sums."""
    answer = intgrads.attribute(bundles["bert"], SENTENCE, n_steps="auto", baseline="pad", endpoints=True)
    whole = prepare_answer(answer, outputs=list(intgrads.OUTPUT_NAMES))
    rebuilt = rebuild_intermediates(prepare_answer(answer, outputs=list(COMPACT_OUTPUTS)))
    assert list(rebuilt) == list(whole)
    for key, value in whole.items():
        assert torch.equal(rebuilt[key], value) if isinstance(value, torch.Tensor) else rebuilt[key] == value, key
    only = prepare_answer(auto_answers["zero"], outputs=["idgi"])
    assert {"idgi", "idgi_token_attributions"} <= set(only) and "integrated_gradients" not in only


def test_a_504_of_auto_counts_every_rounds_rows_of_the_most_it_may_take(bundles, monkeypatch):
    """The deadline passing in the last round: the rows of every earlier round are counted as done, and the total
    is the most the request may take (n_steps auto does not know its own ahead), said as "at most"."""
    import intgrads.engine.attribution as attribution
    from intgrads.serving.guards import deadline_error

    full = intgrads.attribute(bundles["bert"], SENTENCE, n_steps="auto", baseline="pad")
    checks = []
    real = attribution.check_deadline

    def count(deadline, done, total, device=None, at_most=False):
        checks.append(done)

    monkeypatch.setattr(attribution, "check_deadline", count)
    intgrads.attribute(bundles["bert"], SENTENCE, n_steps="auto", baseline="pad", deadline=1e18)
    assert len(checks) > 1   # more than one round

    def late_in_the_last_round(deadline, done, total, device=None, at_most=False):
        real(0.0 if done == checks[-1] else None, done, total, device, at_most)

    monkeypatch.setattr(attribution, "check_deadline", late_in_the_last_round)
    with pytest.raises(DeadlineExceeded) as stopped:
        intgrads.attribute(bundles["bert"], SENTENCE, n_steps="auto", baseline="pad", deadline=1e18)
    error = stopped.value
    assert 0 < error.done_rows == checks[-1] < full["gradient_evaluations"] <= error.total_rows and error.at_most
    assert f"after {error.done_rows} of at most {error.total_rows} interpolation rows" in \
        deadline_error(error, 60).message
