"""Inline SVG figures written by hand: no plotting library, nothing fetched at view time.

Every function returns one ``<svg>`` element as a string, sized in pixels, with
text escaped, ready to paste into HTML.
"""

from __future__ import annotations

from html import escape
from typing import Sequence

import numpy as np

from slakevqa.escaping import printable

PALETTE: tuple[str, ...] = ("#3b6ea8", "#d9822b", "#4f9a5f", "#a4508b", "#8c8c8c")
_FONT = 'font-family="sans-serif" font-size="12"'


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {_FONT} {extra}>'
            f"{escape(printable(text))}</text>")


def interval_bars(labels: Sequence[str], series: dict[str, Sequence[dict]],
                  width: int = 720, row_height: int = 16) -> str:
    """Horizontal bars (0-100%) with 95% interval whiskers, one group of bars per label.

    ``series`` maps a series name (a scorer) to one cell per label:
    ``{"value", "ci_low", "ci_high", "n"}``; empty cells draw nothing.
    """
    left, right, top = 190, 120, 24
    plot_width = width - left - right
    group_height = row_height * len(series) + 8
    height = top + group_height * len(labels) + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    parts += _legend(list(series), left, 14) + _percent_axis(left, plot_width, top, height - 20)
    for row, label in enumerate(labels):
        y0 = top + row * group_height
        parts.append(_text(left - 8, y0 + group_height / 2 + 4, label[:28], "end"))
        for k, cells in enumerate(series.values()):
            parts += _bar(cells[row], left, plot_width, y0 + 4 + k * row_height, row_height - 3,
                          PALETTE[k % len(PALETTE)])
    parts.append("</svg>")
    return "\n".join(parts)


def _bar(cell: dict, left: float, plot_width: float, y: float, h: float, colour: str) -> list[str]:
    if not cell or not cell.get("n"):
        return []
    low = left + plot_width * cell["ci_low"]
    high = left + plot_width * cell["ci_high"]
    mid = y + h / 2
    return [
        f'<rect x="{left}" y="{y:.1f}" width="{plot_width * cell["value"]:.1f}" height="{h}" fill="{colour}" opacity="0.85"/>',
        f'<line x1="{low:.1f}" y1="{mid:.1f}" x2="{high:.1f}" y2="{mid:.1f}" stroke="#222" stroke-width="1.5"/>',
        f'<line x1="{low:.1f}" y1="{y + 2:.1f}" x2="{low:.1f}" y2="{y + h - 2:.1f}" stroke="#222"/>',
        f'<line x1="{high:.1f}" y1="{y + 2:.1f}" x2="{high:.1f}" y2="{y + h - 2:.1f}" stroke="#222"/>',
        _text(left + plot_width + 6, mid + 4, f'{100 * cell["value"]:.1f}% n={cell["n"]}',
              extra='font-size="10"'),
    ]


def _percent_axis(left: float, plot_width: float, top: float, bottom: float) -> list[str]:
    parts = []
    for tick in range(0, 101, 20):
        x = left + plot_width * tick / 100
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd"/>')
        parts.append(_text(x, bottom + 14, f"{tick}%", "middle", 'font-size="10"'))
    return parts


def _legend(names: Sequence[str], x: float, y: float) -> list[str]:
    parts = []
    for k, name in enumerate(names):
        colour = PALETTE[k % len(PALETTE)]
        parts.append(f'<rect x="{x + 120 * k}" y="{y - 9}" width="10" height="10" fill="{colour}"/>')
        parts.append(_text(x + 120 * k + 14, y, name))
    return parts


def histogram(series: dict[str, Sequence[float]], bins: int = 30, width: int = 720,
              height: int = 240, x_label: str = "") -> str:
    """Overlaid count histograms of several series on shared, zero-centred bins."""
    values = [v for vs in series.values() for v in vs]
    if not values:
        return _empty(width, "no data")
    reach = max(abs(min(values)), abs(max(values)), 1e-6)
    edges = np.linspace(-reach, reach, bins + 1)
    counts = {name: np.histogram(vs, bins=edges)[0] for name, vs in series.items()}
    peak = max(1, max(int(c.max()) for c in counts.values()))
    left, right, top, bottom = 40, 20, 24, height - 36
    bin_width = (width - left - right) / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    parts += _legend([f"gold {name} (n={len(vs)})" for name, vs in series.items()], left, 14)
    for k, c in enumerate(counts.values()):
        colour = PALETTE[k % len(PALETTE)]
        for i, count in enumerate(c):
            h = (bottom - top) * count / peak
            parts.append(f'<rect x="{left + i * bin_width:.1f}" y="{bottom - h:.1f}" width="{bin_width:.1f}" '
                         f'height="{h:.1f}" fill="{colour}" opacity="0.55"/>')
    zero = left + (width - left - right) / 2
    parts.append(f'<line x1="{zero:.1f}" y1="{top}" x2="{zero:.1f}" y2="{bottom}" stroke="#222" stroke-dasharray="4 3"/>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{width - right}" y2="{bottom}" stroke="#222"/>')
    parts.append(_text(left, bottom + 14, f"{-reach:.2f}", "start", 'font-size="10"'))
    parts.append(_text(width - right, bottom + 14, f"{reach:.2f}", "end", 'font-size="10"'))
    parts.append(_text(zero, bottom + 28, x_label, "middle"))
    parts.append(_text(left - 6, top + 8, str(peak), "end", 'font-size="10"'))
    parts.append("</svg>")
    return "\n".join(parts)


def _empty(width: int, message: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="40" role="img">'
            f"{_text(10, 24, message)}</svg>")
