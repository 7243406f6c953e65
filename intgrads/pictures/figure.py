"""A picture drawn with matplotlib (Agg canvas, no pyplot, no display): the token heatmap, its colour bar and
the path panel."""

from __future__ import annotations

from .data import (MIDDLE, NEGATIVE, POSITIVE, TOP_COLOURS, Picture, colour_scale, text_colour, top_tokens,
                   display_tokens, picture_data)


def make_figure(picture_or_answer, *, top: int = 8, title: str | None = None):
    """A matplotlib ``Figure`` (Agg canvas, no pyplot) of the two panels. In the path panel, token ``t``'s
    line has gid ``token-t``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    picture = picture_or_answer if isinstance(picture_or_answer, Picture) else picture_data(picture_or_answer)
    scale = colour_scale(picture.attributions)
    cmap = LinearSegmentedColormap.from_list(
        "intgrads", [tuple(c / 255 for c in NEGATIVE), tuple(c / 255 for c in MIDDLE),
                     tuple(c / 255 for c in POSITIVE)])
    norm = Normalize(vmin=-scale, vmax=scale)
    font = FontProperties(family="DejaVu Sans", size=11)
    figure = Figure(figsize=(WIDTH_IN, 4), dpi=DPI)
    renderer = FigureCanvasAgg(figure).get_renderer()
    usable = (WIDTH_IN - 2 * MARGIN_IN) * 72
    boxes, rows = _flow_tokens(picture, renderer, font, usable)

    heat_in = rows * ROW_HEIGHT / 72 + 0.1
    title_in, caption_in, bar_in, path_in, gaps_in = 0.45, 0.35, 0.22, 3.6, 1.35
    height_in = title_in + caption_in + heat_in + bar_in + path_in + gaps_in
    figure.set_size_inches(WIDTH_IN, height_in)
    figure.text(MARGIN_IN / WIDTH_IN, 1 - 0.3 / height_in, title or "Integrated gradients per token",
                fontsize=14, weight="bold", va="baseline")
    figure.text(MARGIN_IN / WIDTH_IN, 1 - (title_in + 0.2) / height_in, picture.caption, fontsize=10,
                va="baseline", color="#333333")
    heat = figure.add_axes([MARGIN_IN / WIDTH_IN, 1 - (title_in + caption_in + heat_in) / height_in,
                            1 - 2 * MARGIN_IN / WIDTH_IN, heat_in / height_in])
    _draw_heatmap(heat, boxes, rows, usable, cmap, norm, font)
    bar_top = title_in + caption_in + heat_in + 0.05
    _draw_colourbar(figure, [0.5 - 1.6 / WIDTH_IN, 1 - (bar_top + 0.12) / height_in, 3.2 / WIDTH_IN,
                             0.12 / height_in], cmap, norm, scale)
    path_top = bar_top + bar_in + 0.75
    axis_room_in = 0.45   # for the y tick labels
    ax = figure.add_axes([(MARGIN_IN + axis_room_in) / WIDTH_IN, 1 - (path_top + path_in) / height_in,
                          1 - (2 * MARGIN_IN + axis_room_in) / WIDTH_IN, path_in / height_in])
    _draw_path_panel(ax, picture, top)
    return figure


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


def _draw_colourbar(figure, rect, cmap, norm, scale):
    from matplotlib.cm import ScalarMappable

    colourbar = figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=figure.add_axes(rect),
                                orientation="horizontal")
    colourbar.set_ticks([-scale, 0, scale])
    colourbar.set_ticklabels([f"{-scale:.3g}", "0", f"{scale:.3g}"])
    colourbar.ax.tick_params(labelsize=8)
    colourbar.set_label("attribution (summed over hidden)", fontsize=8)


def _draw_path_panel(ax, picture: Picture, top: int):
    """Each token's accumulated attribution against alpha; the ``top`` largest |attribution| named."""
    attributions = picture.attributions
    ax.axhline(0, color="#999999", linewidth=0.8, zorder=1)
    named = set(top_tokens(attributions, top))
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


def _rounded_box(x, y, width, height, colour):
    from matplotlib.patches import FancyBboxPatch

    return FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0,rounding_size=3", facecolor=colour,
                          edgecolor="#cccccc", linewidth=0.4)
