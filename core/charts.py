"""Small inline SVG line charts, drawn on the server: no JavaScript and no CDN needed.

Each chart comes with a table of the same numbers on the page, for screen readers and for
anyone who wants the exact values.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from django.utils.safestring import SafeString, mark_safe

PALETTE = ["#2446a8", "#d6641e", "#2a9d5c", "#b3261e", "#7a4fb5", "#0f8b8d", "#946200", "#c2185b"]


@dataclass(frozen=True)
class Series:
    name: str
    values: list[float | None]


def line_chart(
    *, labels: list[str], series: list[Series], title: str, width: int = 640, height: int = 240
) -> SafeString:
    left, right, top, bottom = 52, 28, 14, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for s in series for v in s.values if v is not None]
    if not values or not labels:
        return mark_safe("")
    low, high = min(values), max(values)
    counts = low >= 0  # nothing below zero: the axis does not go below it either
    if low == high:
        spread = max(abs(low) * 0.1, 0.05)
        low, high = low - spread, high + spread
    pad = (high - low) * 0.08
    low, high = low - pad, high + pad
    if counts:
        low = max(low, 0.0)
    n = len(labels)

    def x(i: int) -> float:
        return left + (plot_w * (i / (n - 1)) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - low) / (high - low))

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    for k in range(5):
        value = low + (high - low) * k / 4
        py = y(value)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py:.1f}" y2="{py:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end" class="tick">{value:.3g}</text>')
    # As many labels as fit side by side (about 6.5 px a character at 11 px).
    fits = max(2, int(plot_w // (6.5 * max(len(label) for label in labels) + 12)))
    step = max(1, -(-n // fits))
    for i, label in enumerate(labels):
        if i % step == 0 or i == n - 1:
            label_y = height - bottom + 16
            parts.append(f'<text x="{x(i):.1f}" y="{label_y}" text-anchor="middle" class="tick">{escape(label)}</text>')
    for idx, s in enumerate(series):
        color = PALETTE[idx % len(PALETTE)]
        points = [(x(i), y(v)) for i, v in enumerate(s.values) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        for px, py in points:
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{color}"/>')
    legend_y = height - 8
    offset = left
    for idx, s in enumerate(series):
        color = PALETTE[idx % len(PALETTE)]
        parts.append(f'<rect x="{offset}" y="{legend_y - 9}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{offset + 14}" y="{legend_y}" class="legend">{escape(s.name)}</text>')
        offset += 24 + 7 * len(s.name)
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text above is escaped
