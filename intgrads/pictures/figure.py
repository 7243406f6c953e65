"""A picture drawn with matplotlib (Agg canvas, no pyplot, no display): the warning band, the token heatmap, its
colour bar, the path panel and IDGI's bars."""

from __future__ import annotations

import textwrap

from .data import (IDGI_TITLE, MIDDLE, NEGATIVE, POSITIVE, UNNAMED, WARNING_EDGE, WARNING_FILL, Picture, colour_scale,
                   display_tokens, picture_data, text_colour, token_colour, token_marker, top_tokens)


def make_figure(picture_or_answer, *, top: int = 8, title: str | None = None):
    """A matplotlib ``Figure`` (Agg canvas, no pyplot): a warning band when the answer has warnings, the token
    heatmap with its colour bar (logit units of the attributed class, with the share of F(x) - F(b)), the path
    panel and, when the answer has IDGI, its per-token bars. In the path panel, token ``t``'s line has gid
    ``token-t``; the band's patch has gid ``warnings``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    picture = picture_or_answer if isinstance(picture_or_answer, Picture) else picture_data(picture_or_answer)
    scale = colour_scale(picture.attributions, picture.difference)
    cmap = LinearSegmentedColormap.from_list(
        "intgrads", [tuple(c / 255 for c in NEGATIVE), tuple(c / 255 for c in MIDDLE),
                     tuple(c / 255 for c in POSITIVE)])
    norm = Normalize(vmin=-scale, vmax=scale)
    font = FontProperties(family="DejaVu Sans", size=11)
    figure = Figure(figsize=(WIDTH_IN, 4), dpi=DPI)
    renderer = FigureCanvasAgg(figure).get_renderer()
    usable = (WIDTH_IN - 2 * MARGIN_IN) * 72
    boxes, rows = _flow_tokens(picture, renderer, font, usable)
    warning_lines = _warning_lines(picture.warnings)
    caption = textwrap.fill(picture.caption, 135, break_long_words=False)
    attributed = textwrap.fill(f"attributed: {picture.target_text}", 135, break_long_words=False)
    caption_lines = caption.count("\n") + attributed.count("\n") + 2

    heat_in = rows * ROW_HEIGHT / 72 + 0.1
    warn_in = 0.2 * len(warning_lines) + 0.25 if warning_lines else 0.0
    title_in, bar_in, path_in, gaps_in = 0.45, 0.45, 3.6, 1.35
    caption_in = 0.2 * caption_lines + 0.15
    idgi_in = 2.2 if picture.idgi is not None else 0.0
    height_in = title_in + warn_in + caption_in + heat_in + bar_in + path_in + gaps_in + idgi_in
    figure.set_size_inches(WIDTH_IN, height_in)
    figure.text(MARGIN_IN / WIDTH_IN, 1 - 0.3 / height_in, title or "Integrated gradients per token",
                fontsize=14, weight="bold", va="baseline")
    if warning_lines:
        _draw_warning_band(figure, warning_lines, title_in, warn_in, height_in)
    top_in = title_in + warn_in
    figure.text(MARGIN_IN / WIDTH_IN, 1 - (top_in + 0.1) / height_in, caption, fontsize=10, va="top",
                color="#333333", linespacing=1.4)
    figure.text(MARGIN_IN / WIDTH_IN, 1 - (top_in + 0.1 + 0.2 * (caption.count("\n") + 1)) / height_in, attributed,
                fontsize=10, va="top", color="#333333", gid="target", linespacing=1.4)
    heat = figure.add_axes([MARGIN_IN / WIDTH_IN, 1 - (top_in + caption_in + heat_in) / height_in,
                            1 - 2 * MARGIN_IN / WIDTH_IN, heat_in / height_in])
    _draw_heatmap(heat, boxes, rows, usable, cmap, norm, font)
    bar_top = top_in + caption_in + heat_in + 0.05
    _draw_colourbar(figure, [0.5 - 1.6 / WIDTH_IN, 1 - (bar_top + 0.12) / height_in, 3.2 / WIDTH_IN,
                             0.12 / height_in], cmap, norm, scale, picture)
    path_top = bar_top + bar_in + 0.75
    axis_room_in = 0.45   # for the y tick labels
    ax = figure.add_axes([(MARGIN_IN + axis_room_in) / WIDTH_IN, 1 - (path_top + path_in) / height_in,
                          1 - (2 * MARGIN_IN + axis_room_in) / WIDTH_IN, path_in / height_in])
    _draw_path_panel(ax, picture, top)
    if picture.idgi is not None:
        idgi_ax = figure.add_axes([(MARGIN_IN + axis_room_in) / WIDTH_IN, 0.45 / height_in,
                                   1 - (2 * MARGIN_IN + axis_room_in) / WIDTH_IN - 1.7 / WIDTH_IN,
                                   (idgi_in - 1.1) / height_in])
        _draw_idgi(idgi_ax, picture)
    return figure


def _warning_lines(warnings) -> list[str]:
    """The warnings wrapped for the band, each line at most ~130 characters."""
    lines = []
    for warning in warnings:
        lines += textwrap.wrap(f"⚠ {warning}", 130, subsequent_indent="   ")
    return lines


def _draw_warning_band(figure, lines, top_in, band_in, height_in):
    from matplotlib.patches import Rectangle

    y0 = 1 - (top_in + band_in) / height_in
    figure.add_artist(Rectangle((MARGIN_IN / 2 / WIDTH_IN, y0), 1 - MARGIN_IN / WIDTH_IN, band_in / height_in,
                                transform=figure.transFigure, facecolor=WARNING_FILL, edgecolor=WARNING_EDGE,
                                linewidth=1.2, gid="warnings"))
    for i, line in enumerate(lines):
        figure.text(MARGIN_IN / WIDTH_IN, 1 - (top_in + 0.22 + 0.2 * i) / height_in, line, fontsize=9,
                    va="baseline", color="#7a3e00", weight="bold" if i == 0 else "normal")


WIDTH_IN, DPI, MARGIN_IN = 11.0, 150, 0.6
PAD, GAP, JOINED_GAP, ROW_HEIGHT = 3.0, 5.0, 1.0, 21.0   # points


def _flow_tokens(picture: Picture, renderer, font, usable: float):
    """Flow the token boxes into rows ``usable`` points wide: ``([(x, row, width, text, value)], rows)``."""
    boxes, x, row = [], 0.0, 0
    for (text, joins), value in zip(display_tokens(picture.tokens), picture.attributions):
        w_px, _, _ = renderer.get_text_width_height_descent(text, font, ismath=False)
        width = w_px * 72 / DPI + 2 * PAD
        spacing = (JOINED_GAP if joins else GAP) if x > 0 else 0.0
        if x > 0 and x + spacing + width > usable:
            row, x, spacing = row + 1, 0.0, 0.0
        boxes.append((x + spacing, row, width, text, float(value)))
        x += spacing + width
    return boxes, row + 1


def _draw_heatmap(heat, boxes, rows, usable, cmap, norm, font):
    heat.set_xlim(0, usable)
    heat.set_ylim(rows * ROW_HEIGHT + 4, 0)
    heat.axis("off")
    for x0, row, width, text, value in boxes:
        colour = cmap(norm(value))
        rgb = tuple(int(round(c * 255)) for c in colour[:3])
        y0 = row * ROW_HEIGHT + 2
        heat.add_patch(_rounded_box(x0, y0, width, ROW_HEIGHT - 4, colour))
        heat.text(x0 + width / 2, y0 + (ROW_HEIGHT - 4) / 2, text, ha="center", va="center_baseline",
                  fontproperties=font, color=text_colour(rgb))


def _draw_colourbar(figure, rect, cmap, norm, scale, picture):
    from matplotlib.cm import ScalarMappable

    colourbar = figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=figure.add_axes(rect),
                                orientation="horizontal")
    colourbar.set_ticks([-scale, 0, scale])
    difference = picture.difference
    share = f" ({scale / abs(difference):.0%} of |F(x) − F(b)|)" if difference else ""
    colourbar.set_ticklabels([f"{-scale:.3g}", "0", f"{scale:.3g}{share}"])
    colourbar.ax.tick_params(labelsize=8)
    total = f"F(x) − F(b) = {difference:+.3g}; " if difference is not None else ""
    colourbar.set_label(f"attribution to the target's logit (summed over hidden; {total}"
                        "orange lowers it, purple raises it)", fontsize=8)


def _draw_path_panel(ax, picture: Picture, top: int):
    """Each token's accumulated attribution against alpha; the ``top`` largest |attribution| named, each in its
    word's colour (:func:`token_colour`), the others light grey."""
    attributions = picture.attributions
    ax.axhline(0, color="#999999", linewidth=0.8, zorder=1)
    named = set(top_tokens(attributions, top))
    shown = display_tokens(picture.tokens)
    for t in range(picture.accumulated.shape[1]):
        values = picture.accumulated[:, t]
        if t in named:
            line, = ax.plot(picture.alphas, values, color=token_colour(shown[t][0]), linewidth=1.8,
                            marker=token_marker(shown[t][0]), markersize=3.5, label=f"{shown[t][0]} [{t}]: {attributions[t]:+.3g}", zorder=3)
        else:
            line, = ax.plot(picture.alphas, values, color=UNNAMED, linewidth=0.8, alpha=0.8, label="_nolegend_",
                            zorder=2)
        line.set_gid(f"token-{t}")
    ax.set_xlim(0, 1)
    # where the path points fell (a fixed rule's, or those n_steps "auto" chose): ticks on the bottom edge
    ax.vlines(picture.alphas, 0.0, 0.03, colors="#555555", linewidth=0.9, transform=ax.get_xaxis_transform(),
              zorder=4, gid="path-points")
    ax.set_xlabel(f"α: position on the path  b + α (x − b)   (ticks: its {len(picture.alphas)} points)")
    ax.set_ylabel("accumulated attribution")
    ax.set_title(r"Attribution accumulated along the path:  $\Sigma_{j \leq k}\, w_j\, g_j \cdot (x - b)$, "
                 "summed over hidden", fontsize=10, loc="left")
    ax.grid(True, color="#eeeeee", linewidth=0.6)
    if named:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False,
                  title=f"largest |attribution| ({len(named)})", title_fontsize=8)
        position = ax.get_position()   # make room on the right for the legend
        ax.set_position([position.x0, position.y0, position.width - 1.7 / WIDTH_IN, position.height])


def _draw_idgi(ax, picture: Picture):
    """IDGI per token as bars (gid ``idgi``): each step's change of F shared out in proportion to g^2, so they sum
    to F at the last point minus F at the first, and where F rises at every step every value is >= 0."""
    shown = display_tokens(picture.tokens)
    positions = range(len(picture.idgi))
    bars = ax.bar(positions, picture.idgi, color=[token_colour(text) for text, _ in shown], width=0.7)
    for bar in bars:
        bar.set_gid("idgi")
    ax.set_xticks(list(positions), [text for text, _ in shown], rotation=60, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(picture.idgi) - 0.4)
    ax.axhline(0, color="#999999", linewidth=0.8)
    ax.set_ylabel("IDGI", fontsize=9)
    ax.set_title(textwrap.fill(IDGI_TITLE, 115), fontsize=10, loc="left")
    ax.grid(True, axis="y", color="#eeeeee", linewidth=0.6)


def _rounded_box(x, y, width, height, colour):
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0,rounding_size=3", facecolor=colour,
                          edgecolor="#cccccc", linewidth=0.4)
