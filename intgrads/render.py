"""Pictures of one answer: a token heatmap and the attribution accumulated along the path.

``render_answer(answer, "out.png")`` (or ``.svg``/``.pdf``, drawn by matplotlib's Agg-family backends, no
display needed) or ``render_answer(answer, "out.html")`` (one self-contained page: inline CSS and SVG, no
script, no CDN, nothing fetched). From the command line: ``intgrads-client render ANSWER.gzip -o out.png``.

Top panel: each token coloured by its attribution (red negative, green positive, white 0; the scale is
symmetric, ``±max|attribution|``), with the predicted class, its probability, the target and the
convergence delta in the caption.

Bottom panel: for each token ``t``, the attribution accumulated along the path from the baseline ``b``
to the input ``x``, against the path position ``alpha_k`` (the quadrature nodes, ascending)::

    A_t(alpha_k) = sum_{j <= k} w_j * sum_h g_j[t, h] * (x - b)[t, h]

whose last value is the token's integrated-gradients attribution (``token_attributions``). ``x - b`` is
recovered from the answer's ``intermediates`` (``z_k = b + alpha_k (x - b)``) from the two most distant
nodes; with a single node (one Gauss-Legendre step) it falls back to ``IG / sum_k w_k g_k`` elementwise.
The nodes and weights are those of ``intgrads.step_sizes_and_alphas(method, n_steps)``.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NEGATIVE = (0xD7, 0x30, 0x27)   # red
MIDDLE = (0xF7, 0xF7, 0xF7)     # white
POSITIVE = (0x1A, 0x98, 0x50)   # green
TOP_COLOURS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
               "#2ca02c", "#d62728")
HTML_SUFFIXES = (".html", ".htm")
MATPLOTLIB_SUFFIXES = (".png", ".svg", ".pdf")


@dataclass
class Picture:
    """What was drawn: token texts, their attributions, the path nodes and the accumulated attributions."""

    tokens: list
    attributions: np.ndarray     # (seq,)  token_attributions
    alphas: np.ndarray           # (n_steps,) ascending
    accumulated: np.ndarray      # (n_steps, seq): A_t(alpha_k)
    caption: str
    path: Path | None = None


# ----------------------------------------------------------------------------------------------- numbers

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
    """The path positions ``alpha_k`` of the answer's rows (row order), from its method and n_steps."""
    from .quadrature import step_sizes_and_alphas

    steps = _array(answer["step_sizes"]).reshape(-1)
    method = answer.get("method", "gausslegendre")
    n_steps = int(answer.get("n_steps", steps.shape[0]))
    if n_steps != steps.shape[0]:
        raise ValueError(f"the answer says n_steps={n_steps} but has {steps.shape[0]} step sizes")
    _, alphas = step_sizes_and_alphas(method, n_steps)
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
        parts.append(f"convergence delta: {float(facts['convergence_delta']):.2e}")
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
    """Red (negative) - white (0) - green (positive), linear in ``value / scale`` clipped to [-1, 1]."""
    t = 0.0 if scale <= 0 else max(-1.0, min(1.0, value / scale))
    end = POSITIVE if t > 0 else NEGATIVE
    t = abs(t)
    return tuple(int(round(m + (e - m) * t)) for m, e in zip(MIDDLE, end))


def _text_colour(rgb) -> str:
    luminance = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255
    return "#ffffff" if luminance < 0.45 else "#111111"


def _scale(attributions: np.ndarray) -> float:
    scale = float(np.max(np.abs(attributions))) if attributions.size else 0.0
    return scale if scale > 0 else 1.0


def _top_tokens(attributions: np.ndarray, top: int) -> list[int]:
    order = np.argsort(-np.abs(attributions), kind="stable")
    return sorted(int(i) for i in order[:max(0, top)])


def picture_data(answer) -> Picture:
    """The numbers a picture of ``answer`` shows (see :class:`Picture`)."""
    answer = _one_answer(answer)
    alphas, accumulated = accumulated_attributions(answer)
    return Picture(tokens=[str(token) for token in answer["tokens"]],
                   attributions=_array(answer["token_attributions"]).reshape(-1),
                   alphas=alphas, accumulated=accumulated, caption=caption_text(answer))


# ----------------------------------------------------------------------------------------------- entry

def render_answer(answer, path, *, top: int = 8, title: str | None = None) -> Picture:
    """Draw ``answer`` (a dict, or a one-element list) into ``path``: ``.png``/``.svg``/``.pdf`` with
    matplotlib, ``.html`` as a self-contained page. ``top``: tokens named in the path panel's legend.
    Returns the :class:`Picture` data that was drawn."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in HTML_SUFFIXES:
        picture = picture_data(answer)
        path.write_text(html_page(picture, top=top, title=title), encoding="utf-8")
    elif suffix in MATPLOTLIB_SUFFIXES:
        picture = picture_data(answer)
        figure = make_figure(picture, top=top, title=title)
        figure.savefig(path, dpi=150)
    else:
        raise ValueError(f"output must end in .png, .svg, .pdf or .html; got {path.name!r}")
    picture.path = path
    return picture


# ----------------------------------------------------------------------------------------------- matplotlib

def make_figure(picture_or_answer, *, top: int = 8, title: str | None = None):
    """A matplotlib ``Figure`` (Agg canvas, no pyplot) of the two panels. In the path panel, token ``t``'s
    line has gid ``token-t``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    picture = picture_or_answer if isinstance(picture_or_answer, Picture) else picture_data(picture_or_answer)
    attributions = picture.attributions
    scale = _scale(attributions)
    cmap = LinearSegmentedColormap.from_list(
        "intgrads", [tuple(c / 255 for c in NEGATIVE), tuple(c / 255 for c in MIDDLE),
                     tuple(c / 255 for c in POSITIVE)])
    norm = Normalize(vmin=-scale, vmax=scale)

    width_in, dpi = 11.0, 150
    margin_in = 0.6
    font = FontProperties(family="DejaVu Sans", size=11)
    figure = Figure(figsize=(width_in, 4), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    renderer = canvas.get_renderer()

    # Flow the tokens into rows, measured in points.
    pad, gap, joined_gap, row_height = 3.0, 5.0, 1.0, 21.0
    usable = (width_in - 2 * margin_in) * 72
    boxes, x, row = [], 0.0, 0
    for (text, joins), value in zip(display_tokens(picture.tokens), attributions):
        w_px, _, _ = renderer.get_text_width_height_descent(text, font, ismath=False)
        width = w_px * 72 / dpi + 2 * pad
        spacing = (joined_gap if joins else gap) if x > 0 else 0.0
        if x > 0 and x + spacing + width > usable:
            row, x, spacing = row + 1, 0.0, 0.0
        boxes.append((x + spacing, row, width, text, float(value)))
        x += spacing + width
    rows = row + 1

    heat_in = rows * row_height / 72 + 0.1
    title_in, caption_in, bar_in, path_in, gaps_in = 0.45, 0.35, 0.22, 3.6, 1.35
    height_in = title_in + caption_in + heat_in + bar_in + path_in + gaps_in
    figure.set_size_inches(width_in, height_in)

    def box(top_in, h_in):  # axes rectangle in figure fractions, from a top offset in inches
        return [margin_in / width_in, 1 - (top_in + h_in) / height_in, 1 - 2 * margin_in / width_in,
                h_in / height_in]

    figure.text(margin_in / width_in, 1 - 0.3 / height_in, title or "Integrated gradients per token",
                fontsize=14, weight="bold", va="baseline")
    figure.text(margin_in / width_in, 1 - (title_in + 0.2) / height_in, picture.caption, fontsize=10,
                va="baseline", color="#333333")

    heat = figure.add_axes(box(title_in + caption_in, heat_in))
    heat.set_xlim(0, usable)
    heat.set_ylim(rows * row_height + 4, 0)
    heat.axis("off")
    for x0, row, width, text, value in boxes:
        colour = cmap(norm(value))
        rgb = tuple(int(round(c * 255)) for c in colour[:3])
        y0 = row * row_height + 2
        heat.add_patch(_rounded_box(x0, y0, width, row_height - 4, colour))
        heat.text(x0 + width / 2, y0 + (row_height - 4) / 2, text, ha="center", va="center_baseline",
                  fontproperties=font, color=_text_colour(rgb))

    bar_top = title_in + caption_in + heat_in + 0.05
    bar = figure.add_axes([0.5 - 1.6 / width_in, 1 - (bar_top + 0.12) / height_in, 3.2 / width_in,
                           0.12 / height_in])
    colourbar = figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=bar, orientation="horizontal")
    colourbar.set_ticks([-scale, 0, scale])
    colourbar.set_ticklabels([f"{-scale:.3g}", "0", f"{scale:.3g}"])
    colourbar.ax.tick_params(labelsize=8)
    colourbar.set_label("attribution (summed over hidden)", fontsize=8)

    path_top = bar_top + bar_in + 0.75
    axis_room_in = 0.45   # for the y tick labels
    ax = figure.add_axes([(margin_in + axis_room_in) / width_in, 1 - (path_top + path_in) / height_in,
                          1 - (2 * margin_in + axis_room_in) / width_in, path_in / height_in])
    ax.axhline(0, color="#999999", linewidth=0.8, zorder=1)
    named = set(_top_tokens(attributions, top))
    shown = display_tokens(picture.tokens)
    colour_of = {t: TOP_COLOURS[i % len(TOP_COLOURS)] for i, t in enumerate(sorted(named))}
    for t in range(picture.accumulated.shape[1]):
        values = picture.accumulated[:, t]
        if t in named:
            line, = ax.plot(picture.alphas, values, color=colour_of[t], linewidth=1.8, marker="o", markersize=2.5,
                            label=f"{shown[t][0]} [{t}]: {attributions[t]:+.3g}", zorder=3)
        else:
            line, = ax.plot(picture.alphas, values, color="#b0b0b0", linewidth=0.8, alpha=0.8, label="_nolegend_",
                            zorder=2)
        line.set_gid(f"token-{t}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("α: position on the path  b + α (x − b)")
    ax.set_ylabel("accumulated attribution")
    ax.set_title(r"Attribution accumulated along the path:  $\Sigma_{j \leq k}\, w_j\, g_j \cdot (x - b)$, "
                 "summed over hidden", fontsize=10, loc="left")
    ax.grid(True, color="#eeeeee", linewidth=0.6)
    if named:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False,
                  title=f"largest |attribution| ({len(named)})", title_fontsize=8)
        # make room on the right for the legend
        position = ax.get_position()
        ax.set_position([position.x0, position.y0, position.width - 1.7 / width_in, position.height])
    return figure


def _rounded_box(x, y, width, height, colour):
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0,rounding_size=3", facecolor=colour,
                          edgecolor="#cccccc", linewidth=0.4)


# ----------------------------------------------------------------------------------------------- HTML

PAGE_CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 1.5em;
       color: #111; max-width: 1100px; }
h1 { font-size: 1.3em; margin: 0 0 0.2em 0; }
.caption { color: #333; margin-bottom: 1em; }
.caption b { font-weight: 600; }
.tokens { line-height: 2.1em; font-size: 1.05em; }
.tok { padding: 0.15em 0.3em; border-radius: 4px; border: 1px solid #ccc; white-space: pre; }
.join { margin-left: -0.15em; }
.scale { display: flex; align-items: center; gap: 0.6em; font-size: 0.8em; margin: 0.8em 0 1.4em 0; color: #333; }
.bar { width: 240px; height: 12px; border: 1px solid #ccc;
       background: linear-gradient(to right, %(neg)s, %(mid)s, %(pos)s); }
h2 { font-size: 1.05em; margin: 1.2em 0 0.3em 0; }
.panel { display: flex; align-items: flex-start; gap: 1em; }
.legend { font-size: 0.85em; line-height: 1.6em; }
.swatch { display: inline-block; width: 1.2em; height: 0.25em; vertical-align: middle; margin-right: 0.4em; }
svg text { font-family: inherit; font-size: 11px; fill: #333; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { padding: 0.1em 0.8em; text-align: right; border-bottom: 1px solid #eee; }
td:first-child, th:first-child { text-align: left; }
details { margin-top: 1.2em; }
"""


def _rgb_css(rgb) -> str:
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"


def _nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


def _svg_panel(picture: Picture, named: list[int], colour_of: dict) -> str:
    width, height = 760, 360
    left, right, top_margin, bottom = 70, 15, 15, 45
    plot_w, plot_h = width - left - right, height - top_margin - bottom
    values = picture.accumulated
    low = float(min(0.0, values.min())) if values.size else 0.0
    high = float(max(0.0, values.max())) if values.size else 1.0
    if high - low <= 0:
        low, high = -1.0, 1.0
    span = high - low
    low, high = low - 0.05 * span, high + 0.05 * span

    def sx(alpha):
        return left + alpha * plot_w

    def sy(value):
        return top_margin + (high - value) / (high - low) * plot_h

    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
           'aria-label="accumulated attribution along the path">',
           f'<rect x="{left}" y="{top_margin}" width="{plot_w}" height="{plot_h}" fill="#ffffff" stroke="#999"/>']
    for tick in _nice_ticks(low, high):
        y = sy(tick)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.2f}" y2="{y:.2f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.2f}" text-anchor="end">{tick:.3g}</text>')
    for tick in (0, 0.2, 0.4, 0.6, 0.8, 1.0):
        x = sx(tick)
        out.append(f'<line x1="{x:.2f}" x2="{x:.2f}" y1="{top_margin}" y2="{top_margin + plot_h}" stroke="#eee"/>')
        out.append(f'<text x="{x:.2f}" y="{top_margin + plot_h + 16}" text-anchor="middle">{tick:g}</text>')
    out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(0):.2f}" y2="{sy(0):.2f}" stroke="#999"/>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">'
               'α: position on the path b + α (x − b)</text>')
    out.append(f'<text transform="translate(16 {top_margin + plot_h / 2}) rotate(-90)" text-anchor="middle">'
               'accumulated attribution</text>')
    shown = display_tokens(picture.tokens)
    order = [t for t in range(values.shape[1]) if t not in colour_of] + [t for t in named]
    for t in order:
        points = " ".join(f"{sx(a):.2f},{sy(v):.2f}" for a, v in zip(picture.alphas, values[:, t]))
        label = html.escape(f"{shown[t][0]} [{t}]: final {picture.attributions[t]:+.4g}")
        if t in colour_of:
            out.append(f'<polyline id="token-{t}" points="{points}" fill="none" stroke="{colour_of[t]}" '
                       f'stroke-width="2"><title>{label}</title></polyline>')
        else:
            out.append(f'<polyline id="token-{t}" points="{points}" fill="none" stroke="#b0b0b0" '
                       f'stroke-width="1"><title>{label}</title></polyline>')
    out.append("</svg>")
    return "\n".join(out)


def html_page(picture: Picture, *, top: int = 8, title: str | None = None) -> str:
    """One self-contained HTML page (inline CSS and SVG; no script runs, nothing is fetched)."""
    attributions = picture.attributions
    scale = _scale(attributions)
    named = _top_tokens(attributions, top)
    colour_of = {t: TOP_COLOURS[i % len(TOP_COLOURS)] for i, t in enumerate(named)}
    shown = display_tokens(picture.tokens)
    spans = []
    for t, ((text, joins), value) in enumerate(zip(shown, attributions)):
        rgb = diverging_rgb(float(value), scale)
        tip = html.escape(f"{picture.tokens[t]} [{t}]: {value:+.4g}", quote=True)
        spans.append(("" if joins or t == 0 else " ") +
                     f'<span class="tok{" join" if joins else ""}" style="background:{_rgb_css(rgb)};'
                     f'color:{_text_colour(rgb)}" title="{tip}">{html.escape(text)}</span>')
    legend = "<br>".join(
        f'<span class="swatch" style="background:{colour_of[t]}"></span>'
        f'{html.escape(shown[t][0])} [{t}]: {attributions[t]:+.4g}' for t in named)
    rows = "\n".join(
        f"<tr><td>{t}</td><td>{html.escape(picture.tokens[t])}</td><td>{attributions[t]:+.6g}</td></tr>"
        for t in range(len(picture.tokens)))
    data = json.dumps({"tokens": picture.tokens, "token_attributions": attributions.tolist(),
                       "alphas": picture.alphas.tolist(), "accumulated": picture.accumulated.tolist()},
                      ensure_ascii=False).replace("</", "<\\/")
    css = PAGE_CSS % {"neg": _rgb_css(NEGATIVE), "mid": _rgb_css(MIDDLE), "pos": _rgb_css(POSITIVE)}
    heading = html.escape(title or "Integrated gradients per token")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{heading}</title>
<style>{css}</style>
</head>
<body>
<h1>{heading}</h1>
<div class="caption">{html.escape(picture.caption)}</div>
<div class="tokens">{"".join(spans)}</div>
<div class="scale"><span>{-scale:.3g}</span><span class="bar"></span><span>{scale:.3g}</span>
<span>attribution (summed over hidden): red negative, green positive</span></div>
<h2>Attribution accumulated along the path:
Σ<sub>j≤k</sub> w<sub>j</sub> · g<sub>j</sub> · (x − b), summed over hidden</h2>
<div class="panel">
{_svg_panel(picture, named, colour_of)}
<div class="legend"><b>largest |attribution|</b><br>{legend}</div>
</div>
<details><summary>All tokens</summary>
<table><tr><th>#</th><th>token</th><th>attribution</th></tr>
{rows}
</table></details>
<script type="application/json" id="intgrads-data">{data}</script>
</body>
</html>
"""
