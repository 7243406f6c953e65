"""Pictures of one answer: a token heatmap and the attribution accumulated along the path.

``render_answer(answer, "out.png")`` (or ``.svg``/``.pdf``, drawn by matplotlib's Agg-family backends, no
display needed) or ``render_answer(answer, "out.html")`` (one self-contained page: inline CSS and SVG, no
script, no CDN, nothing fetched). From the command line: ``intgrads-client render ANSWER.gzip -o out.png``.

Top panel: each token coloured by its attribution (orange lowers the target's logit, purple raises it, white 0;
a colour-blind-safe map whose symmetric scale is never narrower than |F(x) - F(b)|, so a weak sentence looks pale),
with the predicted class, its probability, the target and the convergence delta in the caption, and a band
naming the answer's warnings when it has any.

Bottom panel: for each token ``t``, the attribution accumulated along the path from the baseline ``b``
to the input ``x``, against the path position ``alpha_k`` (the quadrature nodes, ascending)::

    A_t(alpha_k) = sum_{j <= k} w_j * sum_h g_j[t, h] * (x - b)[t, h]

whose last value is the token's integrated-gradients attribution (``token_attributions``). ``x - b`` is
recovered from the answer's ``intermediates`` (``z_k = b + alpha_k (x - b)``) from the two most distant
nodes; with a single node (one Gauss-Legendre step) it falls back to ``IG / sum_k w_k g_k`` elementwise.
The nodes are the answer's ``alphas`` (``n_steps="auto"`` chose them per sentence), or those of
``intgrads.step_sizes_and_alphas(method, n_steps)`` for an answer without them; ticks on the panel's bottom edge
mark where they fell.

In a notebook, ``render_answer`` returns a :class:`Picture` that shows itself (PNG, or an HTML ``<img>``) and
whose repr is one line.

Modules: ``data`` (the numbers), ``figure`` (PNG/SVG/PDF with matplotlib), ``page`` (the HTML page), ``lm`` (a causal
LM answer's T x L heatmap and per-target-token paths).
"""

from __future__ import annotations

from pathlib import Path

from .data import (Picture, accumulated_attributions, caption_parts, caption_text, diverging_rgb, display_tokens,
                   path_alphas, path_difference, picture_data)
from .figure import make_figure
from .lm import is_lm_answer, lm_figure, lm_html
from .page import html_page

HTML_SUFFIXES = (".html", ".htm")
MATPLOTLIB_SUFFIXES = (".png", ".svg", ".pdf")

__all__ = ["Picture", "render_answer", "show", "make_figure", "html_page", "picture_data", "accumulated_attributions",
           "path_alphas", "path_difference", "caption_parts", "caption_text", "diverging_rgb", "display_tokens"]


def render_answer(answer, path=None, *, top: int = 8, title: str | None = None) -> Picture:
    """Draw ``answer`` (a dict, or a one-element list) into ``path``: ``.png``/``.svg``/``.pdf`` with
    matplotlib, ``.html`` as a self-contained page. ``top``: tokens named in the path panel's legend.
    Returns the :class:`Picture` data that was drawn; without ``path``, nothing is written and the
    :class:`Picture` shows itself in a notebook (the last value of a cell). For a causal LM answer (:mod:`.lm`: the
    T x L heatmap and each target token's path) the path written, or without ``path`` the matplotlib figure."""
    if path is None:
        return lm_figure(answer, title=title) if is_lm_answer(answer) else picture_data(answer)
    path = Path(path)
    suffix = path.suffix.lower()
    if is_lm_answer(answer) and suffix in HTML_SUFFIXES + MATPLOTLIB_SUFFIXES:   # a causal LM's T x L picture
        if suffix in HTML_SUFFIXES:
            path.write_text(lm_html(answer, title=title), encoding="utf-8")
        else:
            lm_figure(answer, title=title).savefig(path, dpi=150)
        return path
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


def show(answer):
    """Show ``answer``'s picture inline in a notebook (IPython's display); elsewhere return the :class:`Picture`,
    whose ``_repr_png_`` is the PNG (``render_answer(answer, "out.png")`` writes a file)."""
    picture = lm_figure(answer) if is_lm_answer(answer) else picture_data(answer)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return picture
    if get_ipython() is None:
        return picture
    display(picture)
    return None
