"""A small line chart as inline SVG: no plotting library, no JavaScript, prints anywhere."""

from __future__ import annotations

import math
from html import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#17becf"]


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        return [10.0 ** e for e in range(a, b + 1)]
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / 4))
    for mult in (1, 2, 5, 10):
        if (hi - lo) / (step * mult) <= 6:
            step *= mult
            break
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:g}B"
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e3:
        return f"{v / 1e3:g}K"
    return f"{v:.3g}"


def line_chart(series: list[tuple[str, list[tuple[float, float]]]], *, x_label: str,
               y_label: str, log_x: bool = False, width: int = 640, height: int = 360,
               dashed: set[str] | None = None) -> str:
    """`series`: (name, [(x, y), ...]). Returns an <svg> element."""
    pts = [(x, y) for _, s in series for x, y in s if y is not None and math.isfinite(y)
           and (x > 0 or not log_x)]
    if not pts:
        return "<p class='muted'>no data points</p>"
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 * 10 if log_x else x0 + 1
    pad = (y1 - y0) * 0.05 or 0.5
    y0, y1 = y0 - pad, y1 + pad
    L, R, T, B = 64, 150, 16, 44
    W, H = width - L - R, height - T - B

    def sx(x: float) -> float:
        if log_x:
            return L + W * (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
        return L + W * (x - x0) / (x1 - x0)

    def sy(y: float) -> float:
        return T + H * (1 - (y - y0) / (y1 - y0))

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' "
           f"width='{width}' height='{height}' class='chart' role='img' "
           f"aria-label='{escape(y_label)} against {escape(x_label)}'>",
           f"<rect x='{L}' y='{T}' width='{W}' height='{H}' fill='none' stroke='#ccc'/>"]
    for t in _ticks(x0, x1, log_x):
        if x0 <= t <= x1:
            out.append(f"<line x1='{sx(t):.1f}' x2='{sx(t):.1f}' y1='{T}' y2='{T + H}' "
                       "stroke='#eee'/>")
            out.append(f"<text x='{sx(t):.1f}' y='{T + H + 16}' text-anchor='middle' "
                       f"font-size='11'>{_fmt(t)}</text>")
    for t in _ticks(y0, y1, False):
        if y0 <= t <= y1:
            out.append(f"<line x1='{L}' x2='{L + W}' y1='{sy(t):.1f}' y2='{sy(t):.1f}' "
                       "stroke='#eee'/>")
            out.append(f"<text x='{L - 6}' y='{sy(t) + 4:.1f}' text-anchor='end' "
                       f"font-size='11'>{_fmt(t)}</text>")
    out.append(f"<text x='{L + W / 2}' y='{height - 6}' text-anchor='middle' "
               f"font-size='12'>{escape(x_label)}</text>")
    out.append(f"<text x='14' y='{T + H / 2}' text-anchor='middle' font-size='12' "
               f"transform='rotate(-90 14 {T + H / 2})'>{escape(y_label)}</text>")
    for i, (name, s) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        good = [(x, y) for x, y in s if y is not None and math.isfinite(y) and (x > 0 or not log_x)]
        if not good:
            continue
        d = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}"
                     for j, (x, y) in enumerate(good))
        dash = " stroke-dasharray='5,3'" if dashed and name in dashed else ""
        out.append(f"<path d='{d}' fill='none' stroke='{color}' stroke-width='2'{dash}/>")
        for x, y in good:
            out.append(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2.5' fill='{color}'>"
                       f"<title>{escape(name)}: {_fmt(x)}, {y:.4g}</title></circle>")
        ly = T + 14 + 18 * i
        out.append(f"<line x1='{L + W + 10}' x2='{L + W + 30}' y1='{ly - 4}' y2='{ly - 4}' "
                   f"stroke='{color}' stroke-width='2'{dash}/>")
        out.append(f"<text x='{L + W + 34}' y='{ly}' font-size='11'>{escape(name[:22])}</text>")
    out.append("</svg>")
    return "".join(out)
