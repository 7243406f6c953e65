"""A picture as one self-contained HTML page: inline CSS and SVG, no script, nothing fetched."""

from __future__ import annotations

import html
import json
import math

from .data import (IDGI_TITLE, MIDDLE, NEGATIVE, POSITIVE, UNNAMED, WARNING_EDGE, WARNING_FILL, Picture, colour_scale,
                   diverging_rgb, display_tokens, text_colour, token_colour, top_tokens)


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
.warnings { background: %(warn_fill)s; border: 2px solid %(warn_edge)s; color: #7a3e00; padding: 0.5em 0.8em;
            margin: 0.4em 0 0.8em 0; border-radius: 4px; }
.warnings ul { margin: 0.2em 0 0 1.2em; padding: 0; }
.idgi { display: flex; align-items: flex-end; gap: 2px; height: 120px; border-bottom: 1px solid #999;
        margin-top: 0.4em; }
.idgi div { width: 2.6em; }
.idgi-labels { display: flex; gap: 2px; font-size: 0.7em; }
.idgi-labels span { width: 2.6em; overflow: hidden; text-align: center; }
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
    bottom_y = top_margin + plot_h
    out.append('<g class="path-points" stroke="#555"><title>the path points (alphas)</title>' + "".join(
        f'<line x1="{sx(a):.2f}" x2="{sx(a):.2f}" y1="{bottom_y - 7:.2f}" y2="{bottom_y:.2f}"/>'
        for a in picture.alphas) + "</g>")
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
            out.append(f'<polyline id="token-{t}" points="{points}" fill="none" stroke="{UNNAMED}" '
                       f'stroke-width="1"><title>{label}</title></polyline>')
    out.append("</svg>")
    return "\n".join(out)


def _warning_band(warnings) -> str:
    """The answer's warnings in a band above everything (empty when it has none)."""
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(warning)}</li>" for warning in warnings)
    return (f'<div class="warnings" id="warnings" role="alert"><b>⚠ This answer has {len(warnings)} '
            f"warning{'s' if len(warnings) > 1 else ''}: read the numbers with care</b><ul>{items}</ul></div>\n")


def _idgi_block(picture: Picture, shown) -> str:
    """IDGI per token as bars (when the answer has it); all >= 0 along a monotone path, by construction."""
    if picture.idgi is None:
        return ""
    peak = float(abs(picture.idgi).max()) or 1.0   # bar height |value|; a negative value's bar is hatched
    bars = "".join(f'<div title="{html.escape(text, quote=True)} [{t}]: {value:+.4g}" style="height:'
                   f'{abs(value) / peak * 100:.1f}%;background:{token_colour(text)}'
                   + (";background-image:repeating-linear-gradient(45deg,#fff 0 2px,transparent 2px 5px)"
                      if value < 0 else "") + '"></div>'
                   for t, ((text, _), value) in enumerate(zip(shown, picture.idgi)))
    labels = "".join(f"<span>{html.escape(text)}</span>" for text, _ in shown)
    return (f'<h2>{html.escape(IDGI_TITLE)}</h2>\n<div class="idgi" id="idgi">{bars}</div>'
            f'<div class="idgi-labels">{labels}</div>\n')


def html_page(picture: Picture, *, top: int = 8, title: str | None = None) -> str:
    """One self-contained HTML page (inline CSS and SVG; no script runs, nothing is fetched)."""
    attributions = picture.attributions
    scale = colour_scale(attributions, picture.difference)
    named = top_tokens(attributions, top)
    shown = display_tokens(picture.tokens)
    colour_of = {t: token_colour(shown[t][0]) for t in named}
    spans = []
    for t, ((text, joins), value) in enumerate(zip(shown, attributions)):
        rgb = diverging_rgb(float(value), scale)
        tip = html.escape(f"{picture.tokens[t]} [{t}]: {value:+.4g}", quote=True)
        spans.append(("" if joins or t == 0 else " ") +
                     f'<span class="tok{" join" if joins else ""}" style="background:{_rgb_css(rgb)};'
                     f'color:{text_colour(rgb)}" title="{tip}">{html.escape(text)}</span>')
    legend = "<br>".join(
        f'<span class="swatch" style="background:{colour_of[t]}"></span>'
        f'{html.escape(shown[t][0])} [{t}]: {attributions[t]:+.4g}' for t in named)
    rows = "\n".join(
        f"<tr><td>{t}</td><td>{html.escape(picture.tokens[t])}</td><td>{attributions[t]:+.6g}</td></tr>"
        for t in range(len(picture.tokens)))
    data = json.dumps({"tokens": picture.tokens, "token_attributions": attributions.tolist(),
                       "alphas": picture.alphas.tolist(), "accumulated": picture.accumulated.tolist()},
                      ensure_ascii=False).replace("</", "<\\/")
    css = PAGE_CSS % {"neg": _rgb_css(NEGATIVE), "mid": _rgb_css(MIDDLE), "pos": _rgb_css(POSITIVE),
                      "warn_fill": WARNING_FILL, "warn_edge": WARNING_EDGE}
    difference = picture.difference
    share = f" ({scale / abs(difference):.0%} of |F(x) − F(b)|)" if difference else ""
    total = f"F(x) − F(b) = {difference:+.3g}; " if difference is not None else ""
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
{_warning_band(picture.warnings)}<div class="caption">{html.escape(picture.caption)}</div>
<div class="caption" id="target">attributed: {html.escape(picture.target_text)}</div>
<div class="tokens">{"".join(spans)}</div>
<div class="scale"><span>{-scale:.3g}</span><span class="bar"></span><span>{scale:.3g}{share}</span>
<span>attribution to the target's logit (summed over hidden; {total}orange lowers it, purple raises it)</span></div>
<h2>Attribution accumulated along the path:
Σ<sub>j≤k</sub> w<sub>j</sub> · g<sub>j</sub> · (x − b), summed over hidden</h2>
<div class="panel">
{_svg_panel(picture, named, colour_of)}
<div class="legend"><b>largest |attribution|</b><br>{legend}</div>
</div>
{_idgi_block(picture, shown)}<details><summary>All tokens</summary>
<table><tr><th>#</th><th>token</th><th>attribution</th></tr>
{rows}
</table></details>
<script type="application/json" id="intgrads-data">{data}</script>
</body>
</html>
"""
