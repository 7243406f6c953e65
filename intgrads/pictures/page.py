"""A picture as one self-contained HTML page: inline CSS and SVG, no script, nothing fetched."""

from __future__ import annotations

import html
import json
import math

from .data import (MIDDLE, NEGATIVE, POSITIVE, TOP_COLOURS, Picture, colour_scale, diverging_rgb, display_tokens,
                   text_colour, top_tokens)


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
            out.append(f'<polyline id="token-{t}" points="{points}" fill="none" stroke="#b0b0b0" '
                       f'stroke-width="1"><title>{label}</title></polyline>')
    out.append("</svg>")
    return "\n".join(out)


def html_page(picture: Picture, *, top: int = 8, title: str | None = None) -> str:
    """One self-contained HTML page (inline CSS and SVG; no script runs, nothing is fetched)."""
    attributions = picture.attributions
    scale = colour_scale(attributions)
    named = top_tokens(attributions, top)
    colour_of = {t: TOP_COLOURS[i % len(TOP_COLOURS)] for i, t in enumerate(named)}
    shown = display_tokens(picture.tokens)
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
