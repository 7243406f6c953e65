"""The numbers a picture shows: tokens, their attributions, the attribution accumulated along the path
(see the package docstring for the formula), the caption, the answer's warnings, the attributed class, IDGI when
present, and the colours: a colour-blind-safe diverging scale in logit units, a fixed colour per word."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# ColorBrewer's PuOr ends (colour-blind safe): orange for what pushes the target's logit down, purple for up.
NEGATIVE = (0xE6, 0x61, 0x01)   # orange
MIDDLE = (0xF7, 0xF7, 0xF7)     # near white
POSITIVE = (0x5E, 0x3C, 0x99)   # purple
# Okabe and Ito's colour-blind-safe palette (less black, kept for text): a token's line colour comes from its
# text (:func:`token_colour`), so one word has one colour in every picture; unnamed lines are light grey.
TOKEN_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
UNNAMED = "#c8c8c8"
# The colour scale is never narrower than this many logit units: a sentence whose attributions add up to almost
# nothing (F(x) - F(b) near 0) is drawn pale, not saturated.
MIN_SCALE = 1.0
WARNING_FILL, WARNING_EDGE = "#fff3cd", "#b45f06"
IDGI_TITLE = ("IDGI per token: each step's change of F shared by g², summing to F(last point) − F(first); where F "
              "rises at every step, every value is ≥ 0 by construction")


@dataclass(repr=False)
class Picture:
    """What was drawn: token texts, their attributions, the path nodes and the accumulated attributions.

    In a notebook it shows itself (``_repr_png_``, ``_repr_html_``: the figure, drawn again at 100 dpi); its repr
    is one line (tokens, points, file), not the arrays."""

    tokens: list
    attributions: np.ndarray     # (seq,)  token_attributions
    alphas: np.ndarray           # (n_steps,) ascending
    accumulated: np.ndarray      # (n_steps, seq): A_t(alpha_k)
    caption: str
    path: Path | None = None
    warnings: list = field(default_factory=list)   # the answer's warnings, shown in a band above everything
    difference: float | None = None   # F(x) - F(b) = sum(token_attributions) - convergence_delta
    target_text: str = ""        # what is attributed: the class, its name, whether it is the predicted one
    idgi: np.ndarray | None = None   # (seq,) idgi_token_attributions, when the answer has them
    _png: bytes | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        where = f", {str(self.path)!r}" if self.path is not None else ""
        return f"<Picture: {len(self.tokens)} tokens, {len(self.alphas)} path points{where}>"

    def _repr_png_(self) -> bytes:
        """The figure as PNG bytes, drawn once (a notebook asks for every format it knows)."""
        if self._png is None:
            import io

            from .figure import make_figure

            buffer = io.BytesIO()
            make_figure(self).savefig(buffer, format="png", dpi=100)
            self._png = buffer.getvalue()
        return self._png

    def _repr_html_(self) -> str:
        import base64

        data = base64.b64encode(self._repr_png_()).decode("ascii")
        return f'<img alt="integrated gradients per token" style="max-width:100%" src="data:image/png;base64,{data}">'


def _one_answer(answer) -> dict:
    if isinstance(answer, (list, tuple)):
        if len(answer) != 1:
            raise ValueError(f"the file holds {len(answer)} answers; draw them one at a time")
        answer = answer[0]
    if not isinstance(answer, dict):
        raise ValueError("not an intgrads answer (expected a dict)")
    missing = [key for key in ("tokens", "token_attributions", "logits", "intermediate_gradients", "step_sizes",
                               "intermediates", "integrated_gradients") if key not in answer]
    if missing:
        raise ValueError(f"the answer lacks {', '.join(missing)} (an answer of the old tool? it has no tokens or "
                         "logits; ask the new server again)")
    return answer


def _array(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def path_alphas(answer) -> np.ndarray:
    """The path positions ``alpha_k`` of the answer's rows (row order): those of its fixed rule (method and
    n_steps, in float64), or its ``alphas`` (n_steps "auto" chose them)."""
    from ..answer.rebuild import path_alphas as answer_alphas
    from ..engine.quadrature import METHODS, step_sizes_and_alphas

    steps = _array(answer["step_sizes"]).reshape(-1)
    method = answer.get("method", "gausslegendre")
    n_steps = int(answer.get("n_steps", steps.shape[0]))
    if n_steps != steps.shape[0]:
        raise ValueError(f"the answer says n_steps={n_steps} but has {steps.shape[0]} step sizes")
    alphas = step_sizes_and_alphas(method, n_steps)[1] if method in METHODS else answer_alphas(answer)
    return np.asarray(alphas, dtype=np.float64)


def path_difference(answer) -> np.ndarray:
    """``x - b`` (seq, hidden), solved from the intermediates ``z_k = b + alpha_k (x - b)``."""
    answer = _one_answer(answer)
    alphas = path_alphas(answer)
    z = _array(answer["intermediates"])
    low, high = int(np.argmin(alphas)), int(np.argmax(alphas))
    if alphas[high] - alphas[low] > 1e-6:
        return (z[high] - z[low]) / (alphas[high] - alphas[low])
    # One node only: x - b = IG / sum_k w_k g_k where that sum is not 0 (elsewhere IG is 0 and so is A_t).
    weights = _array(answer["step_sizes"]).reshape(-1, 1, 1)
    total = (weights * _array(answer["intermediate_gradients"])).sum(axis=0)
    ig = _array(answer["integrated_gradients"]).reshape(total.shape)
    out = np.zeros_like(total)
    np.divide(ig, total, out=out, where=np.abs(total) > 0)
    return out


def accumulated_attributions(answer) -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, A)``: the nodes ascending (n_steps,) and ``A[k, t] = sum_{j<=k} w_j sum_h g_j[t,h] (x-b)[t,h]``
    (n_steps, seq), the rows taken in ascending alpha; ``A[-1]`` equals ``token_attributions``."""
    answer = _one_answer(answer)
    alphas = path_alphas(answer)
    weights = _array(answer["step_sizes"]).reshape(-1)
    grads = _array(answer["intermediate_gradients"])
    difference = path_difference(answer)
    per_step = weights[:, None] * np.einsum("ksh,sh->ks", grads, difference)
    order = np.argsort(alphas, kind="stable")
    return alphas[order], np.cumsum(per_step[order], axis=0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def caption_parts(answer) -> dict:
    """The caption's facts: predicted class and label, its probability, target (and its probability), delta."""
    logits = _array(answer["logits"]).reshape(-1)
    probabilities = _softmax(logits)
    predicted = int(np.argmax(logits))
    labels = list(answer.get("label_names") or [])
    label = labels[predicted] if predicted < len(labels) else str(predicted)
    target = answer.get("target")
    return {
        "predicted": predicted,
        "label": label,
        "probability": float(probabilities[predicted]),
        "target": target,
        "target_probability": float(probabilities[target]) if isinstance(target, int) and
        0 <= target < len(probabilities) else None,
        "convergence_delta": answer.get("convergence_delta"),
        "method": answer.get("method"),
        "n_steps": answer.get("n_steps"),
        "baseline": answer.get("baseline"),
    }


def logit_difference(answer) -> float | None:
    """F(x) - F(b) of the target's logit: sum(IG) - convergence_delta (completeness: the exact integral's sum)."""
    delta = answer.get("convergence_delta")
    if delta is None:
        return None
    return float(_array(answer["token_attributions"]).sum()) - float(delta)


def target_text(answer) -> str:
    """The attributed class in words: ``'positive' (class 1), the predicted class``, or ``..., not the predicted
    class 'negative' (p = 0.91)``."""
    facts = caption_parts(answer)
    labels = list(answer.get("label_names") or [])
    target = facts["target"]
    if not isinstance(target, int):
        return "the predicted class"
    name = f"{labels[target]!r} (class {target})" if target < len(labels) else f"class {target}"
    if target == facts["predicted"]:
        return f"{name}, the predicted class"
    return (f"{name}, not the predicted class {facts['label']!r} (p = {facts['probability']:.2f}); "
            f"p({name.split(' (')[0]}) = {facts['target_probability']:.2f}")


def caption_text(answer) -> str:
    facts = caption_parts(answer)
    label = facts["label"]
    named = f"{label} (class {facts['predicted']})" if label != str(facts["predicted"]) else f"class {label}"
    parts = [f"predicted: {named}, p = {facts['probability']:.3f}"]
    if facts["target"] is not None:
        target = f"target: {facts['target']}"
        if facts["target_probability"] is not None and facts["target"] != facts["predicted"]:
            target += f" (p = {facts['target_probability']:.3f})"
        parts.append(target)
    if facts["convergence_delta"] is not None:
        delta, difference = float(facts["convergence_delta"]), logit_difference(answer)
        share = f" ({abs(delta) / abs(difference):.0%} of |F(x) − F(b)|)" if difference else ""
        parts.append(f"convergence delta: {delta:.2e}{share}")
    settings = ", ".join(str(value) for value in (facts["method"], facts["n_steps"] and f"{facts['n_steps']} steps",
                                                  facts["baseline"] and f"baseline {facts['baseline']}") if value)
    if settings:
        parts.append(settings)
    return "  ·  ".join(parts)


def display_tokens(tokens) -> list[tuple[str, bool]]:
    """``(text, joins_previous)`` per token: WordPiece ``##x`` and SentencePiece continuations join the
    token before them; the SentencePiece word mark ``▁`` is dropped."""
    tokens = [str(token) for token in tokens]
    sentencepiece = any(token.startswith("\u2581") for token in tokens)
    out = []
    for position, token in enumerate(tokens):
        special = token.startswith(("<", "[")) and token.endswith((">", "]"))
        if sentencepiece:
            if token.startswith("\u2581"):
                out.append((token[1:] or token, False))
            else:
                out.append((token, position > 0 and not special and not out[-1][0].startswith(("<", "["))))
        elif token.startswith("##") and len(token) > 2:
            out.append((token[2:], position > 0))
        else:
            out.append((token, False))
    return out


def diverging_rgb(value: float, scale: float) -> tuple[int, int, int]:
    """Orange (negative) - near white (0) - purple (positive), linear in ``value / scale`` clipped to [-1, 1]."""
    t = 0.0 if scale <= 0 else max(-1.0, min(1.0, value / scale))
    end = POSITIVE if t > 0 else NEGATIVE
    t = abs(t)
    return tuple(int(round(m + (e - m) * t)) for m, e in zip(MIDDLE, end))


TOKEN_MARKERS = ("o", "s", "^", "D", "v")


def _token_hash(text: str) -> int:
    import zlib

    return zlib.crc32(text.lower().encode("utf-8"))


def token_colour(text: str) -> str:
    """A token's line colour, from its text alone: the same word has the same colour in every picture."""
    return TOKEN_COLOURS[_token_hash(text) % len(TOKEN_COLOURS)]


def token_marker(text: str) -> str:
    """A token's marker, from its text alone: with the colour, 35 looks that tell most words of a picture apart."""
    return TOKEN_MARKERS[_token_hash(text) // len(TOKEN_COLOURS) % len(TOKEN_MARKERS)]


def text_colour(rgb) -> str:
    luminance = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255
    return "#ffffff" if luminance < 0.45 else "#111111"


def colour_scale(attributions: np.ndarray, difference: float | None = None) -> float:
    """The attribution (logit units) drawn at full colour: the largest of max|attribution|, |F(x) - F(b)| and
    MIN_SCALE. A token's colour so says how much of the target's logit change it carries, and a sentence whose
    attributions add up to almost nothing looks pale."""
    largest = float(np.max(np.abs(attributions))) if attributions.size else 0.0
    candidates = [largest, MIN_SCALE] + ([abs(difference)] if difference is not None and
                                         np.isfinite(difference) else [])
    return max(candidates)


def top_tokens(attributions: np.ndarray, top: int) -> list[int]:
    order = np.argsort(-np.abs(attributions), kind="stable")
    return sorted(int(i) for i in order[:max(0, top)])


def picture_data(answer) -> Picture:
    """The numbers a picture of ``answer`` shows (see :class:`Picture`)."""
    answer = _one_answer(answer)
    alphas, accumulated = accumulated_attributions(answer)
    idgi = answer.get("idgi_token_attributions")
    return Picture(tokens=[str(token) for token in answer["tokens"]],
                   attributions=_array(answer["token_attributions"]).reshape(-1),
                   alphas=alphas, accumulated=accumulated, caption=caption_text(answer),
                   warnings=[str(w) for w in answer.get("warnings") or []], difference=logit_difference(answer),
                   target_text=target_text(answer), idgi=None if idgi is None else _array(idgi).reshape(-1))
