"""Pictures of a causal LM answer: the T x L heatmap (target tokens down, input tokens across; red negative, green
positive, the scale symmetric, +-max|attribution|; the positions at or after a target token's own are blank) and,
under it, the path panel of each target token: its attribution accumulated along the path,

    S_t(alpha_k) = sum_(j <= k) sum_l step_token_attributions[t, j, l]

which ends at sum_l token_attributions[t, l] (= F_t(x) - F_t(b) up to the convergence delta). PNG/SVG/PDF with
matplotlib (Agg, no display), or an HTML page holding the SVG."""

from __future__ import annotations

import numpy as np

from .data import MIDDLE, NEGATIVE, POSITIVE, display_tokens


def is_lm_answer(answer) -> bool:
    item = answer[0] if isinstance(answer, list) and len(answer) == 1 else answer
    return isinstance(item, dict) and item.get("kind") == "causal_lm"


def lm_figure(answer, *, title: str | None = None):
    """A matplotlib ``Figure`` (Agg canvas) of a causal LM answer: the heatmap, and the path panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

    answer = answer[0] if isinstance(answer, list) else answer
    heat = np.asarray(answer["token_attributions"], dtype=np.float64)
    count, width = heat.shape
    prompt = int(answer.get("prompt_length", width - count + 1))
    masked = np.ma.array(heat, mask=np.arange(width)[None, :] >= prompt + np.arange(count)[:, None])
    scale = float(np.abs(heat).max()) or 1.0
    cmap = LinearSegmentedColormap.from_list("intgrads", [tuple(c / 255 for c in colour)
                                                          for colour in (NEGATIVE, MIDDLE, POSITIVE)])
    cmap = cmap.with_extremes(bad="#f0f0f0")
    inputs = [_shown(text) for text, _ in display_tokens(answer["tokens"])]
    targets = [_shown(text) for text, _ in display_tokens(answer["target_tokens"])]
    figure = Figure(figsize=(max(6.0, 0.42 * width + 2.5), 0.38 * count + 5.2), dpi=150)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, 1, height_ratios=[max(1.0, 0.38 * count), 3.0], hspace=0.6)
    ax = figure.add_subplot(grid[0])
    image = ax.imshow(masked, cmap=cmap, vmin=-scale, vmax=scale, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(width), inputs, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(count), targets, fontsize=8)
    ax.axvline(prompt - 0.5, color="#555555", linewidth=0.8)
    ax.set_xlabel("input tokens (prompt | earlier target tokens)")
    ax.set_ylabel("target token")
    figure.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    ax.set_title(title or f"Attribution of each target token ({answer.get('score', 'logprob')}, "
                          f"{answer.get('n_steps')} steps, baseline {answer.get('baseline')})", fontsize=11)
    path = figure.add_subplot(grid[1])
    alphas = np.asarray(answer["alphas"], dtype=np.float64)
    steps = np.asarray(answer["step_token_attributions"], dtype=np.float64).sum(axis=2).cumsum(axis=1)   # (T, S)
    for t in range(count):
        path.plot(alphas, steps[t], marker=".", linewidth=1, label=targets[t])
    path.set_xlim(0, 1)
    path.set_xlabel("alpha (path position)")
    path.set_ylabel("accumulated attribution")
    if count <= 12:
        path.legend(fontsize=7, ncol=min(count, 4))
    return figure


def lm_html(answer, *, title: str | None = None) -> str:
    """One self-contained HTML page holding the figure as inline SVG."""
    import html
    import io

    buffer = io.StringIO()
    lm_figure(answer, title=title).savefig(buffer, format="svg")
    heading = html.escape(title or "Causal LM attribution")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{heading}</title></head><body>"
            f"<h1 style='font-family:sans-serif'>{heading}</h1>{buffer.getvalue()}</body></html>")


def _shown(token: str) -> str:
    """A byte-level BPE token as text: its space and newline markers (Ġ, Ċ) written out."""
    return token.replace("Ġ", " ").replace("Ċ", "\\n")
