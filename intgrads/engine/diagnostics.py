"""Warnings that say when an answer is poor, so that it does not look like any other.

For one sentence, with target logit F, attributed-layer values x (input) and b (baseline), nodes a_k and
per-step gradients g_k:

- **convergence**: by completeness, sum(IG) = F(x) - F(b) for the exact integral, and the convergence delta
  is the quadrature's error. A warning when

      |delta| > CONVERGENCE_RTOL * |F(x) - F(b)|   and   |delta| > CONVERGENCE_ATOL;

- **gradient spike**: with m_k = max|g_k|, a warning when max_k m_k > SPIKE_RATIO * median_k m_k. The
  integrand is then nearly singular at that node, and a few nodes carry the integral. XLNet with a zero
  baseline does this near a = 0: every word vector there is ~0, and the LayerNorms divide by their spread;
- **non-finite**: NaN or infinity in the gradients, the integrated gradients or the logits. The server refuses
  such an answer (422) rather than sending NaNs; :func:`intgrads.attribute` returns it with this warning;
- **truncation**: the sentence had more tokens than ``max_tokens`` and only its first tokens were attributed;
- **n_steps auto short of its tolerance**: the refinement reached ``max_steps`` first (the sentence names the r
  and the estimated error it reached; see ``adaptive``).
"""

from __future__ import annotations

import math

CONVERGENCE_RTOL = 0.05
CONVERGENCE_ATOL = 1e-3
SPIKE_RATIO = 100.0
NON_FINITE = "non-finite values"


def answer_warnings(*, delta: float, f_input: float, f_baseline: float, step_maxima, alphas, n_steps: int,
                    finite: bool, full_length: int, max_tokens: int, auto: bool = False,
                    unfinished: str | None = None, method: str | None = None) -> list[str]:
    """The warnings of one answer (an empty list when all is well). ``step_maxima``: m_k = max|g_k| per step,
    in the order of ``alphas``. ``auto``: the points were chosen by n_steps "auto"; ``unfinished``: its warning
    when it stopped short of the tolerance; ``method``: the quadrature rule used (the advice names what was not
    tried yet)."""
    warnings = []
    if not finite:
        warnings.append(f"{NON_FINITE} (NaN or infinity) in the gradients, integrated gradients or logits: the "
                        "model overflows on this path; try another baseline (pad, unk) or float32 inputs")
    difference = f_input - f_baseline
    if math.isfinite(delta) and abs(delta) > CONVERGENCE_ATOL and abs(delta) > CONVERGENCE_RTOL * abs(difference):
        advice = "raise max_steps" if auto else convergence_advice(n_steps, method)
        warnings.append(f"the integral did not converge: |convergence delta| = {abs(delta):.3g} is "
                        f"{_share(delta, difference)} of |F(x) - F(b)| = {abs(difference):.3g} (warned above "
                        f"{CONVERGENCE_RTOL:.0%}); {advice}")
    if unfinished:
        warnings.append(unfinished)
    maxima = [float(m) for m in step_maxima]
    finite_maxima = sorted(m for m in maxima if math.isfinite(m))
    if finite_maxima:
        median = finite_maxima[len(finite_maxima) // 2]
        peak = max(finite_maxima)
        if peak > SPIKE_RATIO * max(median, 1e-30):
            k = maxima.index(peak)
            warnings.append(f"the gradients spike near alpha = {float(alphas[k]):.3g} (step {k}): max |g| = "
                            f"{peak:.3g}, {peak / max(median, 1e-30):.3g} x their median; a few steps carry the "
                            "integral, and the path likely starts where the model is singular (XLNet with a zero "
                            "baseline): try baseline pad or unk")
    if full_length > max_tokens:
        warnings.append(f"truncated: the sentence has {full_length} tokens; its first {max_tokens} (special tokens "
                        "kept) were attributed")
    return warnings


def convergence_advice(n_steps: int, method: str | None) -> str:
    """What to try after a fixed rule of ``n_steps`` points did not converge: n_steps "auto" first (it refines until
    its error estimate is under the tolerance), then more points, with Gauss-Legendre when another rule was used."""
    more = max(2 * n_steps, 100)
    if method in (None, "gausslegendre"):
        return f'try n_steps "auto" (refined until the error is within its tolerance), or n_steps {more}'
    return (f'try n_steps "auto" (refined until the error is within its tolerance), or method gausslegendre, or '
            f"n_steps {more}")


def _share(delta: float, difference: float) -> str:
    """|delta| / |difference| as a percentage with as many decimals as it takes not to read as the threshold
    itself ("5.1%", never "5%", for a share just above CONVERGENCE_RTOL)."""
    if difference == 0:
        return "all"
    share = abs(delta) / abs(difference)
    for decimals in range(4):
        text = f"{share:.{decimals}%}"
        if float(text.rstrip("%")) / 100 > CONVERGENCE_RTOL:
            break
    return text
