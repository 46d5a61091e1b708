"""The home page's density plot as inline SVG, drawn at export time (feature pages' histograms are
drawn by assets/dashboard.js the same way): no chart library, no network.

Bars are `<rect>`s with a `<title>` (the browser shows the bin and its count on hover); colours
come from CSS classes so the light and dark palettes both work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

WIDTH, HEIGHT = 360, 150
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 8, 30, 18


def _label(value: float) -> str:
    return f"{value:.3g}"


def bars_svg(
    edges: Sequence[float],
    counts: Sequence[int],
    title: str,
    bar_class=None,
    tick_label=_label,
    note: str = "",
    ticks: Sequence[float] = (),
) -> str:
    """A bar chart of `counts` over bins `edges` (one more edge than counts).

    `bar_class(low, high)` picks a bar's CSS class; `tick_label` formats bin edges and the axis
    `ticks` (default: both ends). `title` and `note` must already be escaped.
    """
    if not counts or max(counts) <= 0:
        return _empty(title)
    peak, n = max(counts), len(counts)
    plot_w, plot_h = WIDTH - 2 * PAD_LEFT, HEIGHT - PAD_BOTTOM - PAD_TOP
    step = plot_w / n
    rects = []
    for i, count in enumerate(counts):
        if count <= 0:
            continue
        h = max(1.0, plot_h * count / peak)
        css = bar_class(edges[i], edges[i + 1]) if bar_class else "b"
        rects.append(
            f'<rect class="{css}" x="{PAD_LEFT + i * step:.1f}" y="{PAD_TOP + plot_h - h:.1f}" '
            f'width="{max(step - 1, 1):.1f}" height="{h:.1f}"><title>'
            f"{tick_label(edges[i])} to {tick_label(edges[i + 1])}: {count:,}</title></rect>"
        )
    base = PAD_TOP + plot_h
    axis = (
        f'<line x1="{PAD_LEFT}" y1="{base}" x2="{WIDTH - PAD_LEFT}" y2="{base}"/>'
        + _ticks(ticks or (edges[0], edges[-1]), edges[0], edges[-1], base, tick_label)
        + f'<text x="{WIDTH / 2}" y="{base + 26}" text-anchor="middle">{note}</text>'
        f'<text x="{WIDTH - PAD_LEFT}" y="12" text-anchor="end">max {peak:,}</text>'
    )
    return _frame(title, "".join(rects) + axis)


def _ticks(values: Sequence[float], low: float, high: float, base: float, label) -> str:
    """Labelled tick marks along the x axis; the end labels are anchored inside the frame."""
    out, span = [], (high - low) or 1.0
    for value in values:
        x = PAD_LEFT + (WIDTH - 2 * PAD_LEFT) * (value - low) / span
        anchor = "start" if x <= PAD_LEFT + 1 else "end" if x >= WIDTH - PAD_LEFT - 1 else "middle"
        out.append(
            f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 3}"/>'
            f'<text x="{x:.1f}" y="{base + 14}" text-anchor="{anchor}">{label(value)}</text>'
        )
    return "".join(out)


def _frame(title: str, body: str) -> str:
    return (
        f'<svg class="sx-hist" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}">'
        f'<title>{title}</title><text class="t" x="{PAD_LEFT}" y="12">{title}</text>{body}</svg>'
    )


def _empty(title: str) -> str:
    return _frame(
        title,
        f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data</text>',
    )


def density_svg(densities: Sequence[float], bins: int = 40) -> str:
    """Feature densities on a log10 axis; dead features (density 0) cannot be drawn and are
    counted in the caption instead."""
    live = [math.log10(d) for d in densities if d > 0]
    if not live:
        return _empty("Feature density (log scale)")
    low, high = math.floor(min(live)), max(0.0, math.ceil(max(live)))
    if high <= low:
        high = low + 1
    width = (high - low) / bins
    counts = [0] * bins
    for x in live:
        counts[min(bins - 1, int((x - low) / width))] += 1
    edges = [low + i * width for i in range(bins + 1)]
    dead = len(densities) - len(live)
    return bars_svg(
        edges,
        counts,
        "Feature density (log scale)",
        tick_label=lambda x: f"{10**x:.2g}",
        note=f"fraction of tokens a feature fires on ({dead:,} dead not shown)",
        ticks=range(low, int(high) + 1),
    )
