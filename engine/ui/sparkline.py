"""A sparkline as SVG polyline coordinates, drawn by the server.

The patient page lists every analyte with its latest value; a small line beside each shows
the direction of the series without a chart library per row (and without inline script or
style, which the page's Content-Security-Policy forbids).
"""

from __future__ import annotations

from collections.abc import Sequence

WIDTH = 96
HEIGHT = 22
MARGIN = 2


def points(values: Sequence[float], width: int = WIDTH, height: int = HEIGHT) -> str:
    """`x,y x,y …` for an SVG polyline, oldest value on the left; evenly spaced in order of
    arrival (a trend, not a time axis). A flat or single-value series is a middle line."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low
    inner_w, inner_h = width - 2 * MARGIN, height - 2 * MARGIN
    step = inner_w / (len(values) - 1) if len(values) > 1 else 0.0
    out = []
    for i, v in enumerate(values):
        x = MARGIN + (i * step if len(values) > 1 else inner_w / 2)
        y = MARGIN + (inner_h / 2 if span == 0 else inner_h * (high - v) / span)
        out.append(f"{x:.1f},{y:.1f}")
    if len(out) == 1:  # one value: a short level stroke, so the row still shows something
        y = out[0].split(",")[1]
        out = [f"{MARGIN + inner_w / 2 - 6:.1f},{y}", f"{MARGIN + inner_w / 2 + 6:.1f},{y}"]
    return " ".join(out)
