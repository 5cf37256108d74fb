"""Small charts as inline SVG: no plotting library, no JavaScript, prints anywhere.

Charts are drawn in a 600-unit-wide box and scale with the page; text is 18 units, so it stays
about 11 px tall on a 360 px phone screen. The legend goes below the plot so the plot keeps the
width. Points are (x, y) or (x, y, err): err draws a ±err bar (a standard error where one exists).
"""

from __future__ import annotations

import math
from html import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#17becf"]
WIDTH, PLOT_H, FONT = 600, 300, 18
L, R, T, B = 78, 16, 12, 64  # margins around the plot area
LEGEND_CHARS = 46  # what fits beside a legend mark at 18 units a character-height


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        decades = [10.0 ** e for e in range(a, b + 1)]
        inside = [t for t in decades if lo <= t <= hi]
        if len(inside) >= 3:
            return decades
        # less than three decades in view: 1-2-5 steps so the axis still has labels
        return [m * t for t in decades for m in (1, 2, 5)]
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
    for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if a >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}"


def _fmt_y(v: float, percent: bool) -> str:
    return f"{100 * v:.3g}%" if percent else _fmt(v)


class _Frame:
    """Axes, grid and scales for points spanning xs and ys."""

    def __init__(self, xs: list[float], ys: list[float], log_x: bool, percent: bool,
                 x_label: str, y_label: str, n_legend: int, pad_x: float = 0.0):
        x0, x1 = min(xs), max(xs)
        if x1 == x0:  # one x value: centre it in a range around it
            x0, x1 = (x0 / 10 ** 0.5, x0 * 10 ** 0.5) if log_x else (x0 - 1, x1 + 1)
        elif pad_x and log_x:  # keep dots off the frame
            f = (x1 / x0) ** pad_x
            x0, x1 = x0 / f, x1 * f
        elif pad_x:
            d = (x1 - x0) * pad_x
            x0, x1 = x0 - d, x1 + d
        y0, y1 = min(ys), max(ys)
        pad = (y1 - y0) * 0.08 or (0.05 if percent else 0.5)
        self.y0, self.y1 = y0 - pad, y1 + pad
        if percent:
            self.y0, self.y1 = max(self.y0, 0.0), min(self.y1, 1.0) if y1 <= 1 else self.y1
            if self.y1 <= self.y0:
                self.y1 = self.y0 + 0.05
        self.x0, self.x1, self.log_x, self.percent = x0, x1, log_x, percent
        self.W, self.H = WIDTH - L - R, PLOT_H
        self.height = T + PLOT_H + B + 26 * n_legend
        self.x_label, self.y_label = x_label, y_label

    def sx(self, x: float) -> float:
        if self.log_x:
            lx0, lx1 = math.log10(self.x0), math.log10(self.x1)
            return L + self.W * (math.log10(x) - lx0) / (lx1 - lx0)
        return L + self.W * (x - self.x0) / (self.x1 - self.x0)

    def sy(self, y: float) -> float:
        return T + self.H * (1 - (y - self.y0) / (self.y1 - self.y0))

    def open(self) -> list[str]:
        W, H = self.W, self.H
        out = [f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {WIDTH} {self.height}' "
               f"class='chart' role='img' font-size='{FONT}' "
               f"aria-label='{escape(self.y_label)} against {escape(self.x_label)}'>",
               f"<rect x='{L}' y='{T}' width='{W}' height='{H}' fill='none' stroke='#ccc'/>"]
        xt = [t for t in _ticks(self.x0, self.x1, self.log_x) if self.x0 <= t <= self.x1]
        if len(xt) > 6:
            xt = xt[::2]
        for t in xt:
            out.append(f"<line x1='{self.sx(t):.1f}' x2='{self.sx(t):.1f}' y1='{T}' "
                       f"y2='{T + H}' stroke='#eee'/>")
            out.append(f"<text x='{self.sx(t):.1f}' y='{T + H + 22}' "
                       f"text-anchor='middle'>{_fmt(t)}</text>")
        for t in _ticks(self.y0, self.y1, False):
            if self.y0 <= t <= self.y1:
                out.append(f"<line x1='{L}' x2='{L + W}' y1='{self.sy(t):.1f}' "
                           f"y2='{self.sy(t):.1f}' stroke='#eee'/>")
                out.append(f"<text x='{L - 6}' y='{self.sy(t) + 6:.1f}' "
                           f"text-anchor='end'>{_fmt_y(t, self.percent)}</text>")
        out.append(f"<text x='{L + W / 2}' y='{T + H + 48}' text-anchor='middle'>"
                   f"{escape(self.x_label)}</text>")
        out.append(f"<text x='18' y='{T + H / 2}' text-anchor='middle' "
                   f"transform='rotate(-90 18 {T + H / 2})'>{escape(self.y_label)}</text>")
        return out

    def legend(self, i: int, name: str, color: str, dash: str, line: bool = True) -> list[str]:
        ly = T + self.H + B + 26 * i + 10
        mark = (f"<line x1='{L}' x2='{L + 28}' y1='{ly - 6}' y2='{ly - 6}' stroke='{color}' "
                f"stroke-width='3'{dash}/>" if line else
                f"<circle cx='{L + 14}' cy='{ly - 6}' r='6' fill='{color}'/>")
        short = name if len(name) <= LEGEND_CHARS else name[:LEGEND_CHARS - 1] + "…"
        return [mark, f"<text x='{L + 36}' y='{ly}'><title>{escape(name)}</title>"
                      f"{escape(short)}</text>"]


def _good(pts, log_x: bool) -> list[tuple]:
    return [p for p in pts if p[1] is not None and math.isfinite(p[1]) and (p[0] > 0 or not log_x)]


def line_chart(series: list[tuple[str, list[tuple]]], *, x_label: str, y_label: str,
               log_x: bool = False, dashed: set[str] | None = None,
               percent: bool = False, reference: set[str] | None = None) -> str:
    """`series`: (name, [(x, y) or (x, y, err), ...]). Returns an <svg> element. Series named in
    `reference` (e.g. a chance level) are drawn grey, without point markers."""
    pts = [p for _, s in series for p in _good(s, log_x)]
    if not pts:
        return "<p class='muted'>no data points</p>"
    ys = [p[1] + s * (p[2] if len(p) > 2 and p[2] else 0) for p in pts for s in (-1, 1)]
    f = _Frame([p[0] for p in pts], ys, log_x, percent, x_label, y_label, len(series))
    out = f.open()
    for i, (name, s) in enumerate(series):
        ref = bool(reference and name in reference)
        color = "#888" if ref else PALETTE[i % len(PALETTE)]
        good = sorted(_good(s, log_x))
        dash = " stroke-dasharray='8,5'" if dashed and name in dashed else ""
        out += f.legend(i, name, color, dash)
        if not good:
            continue
        d = " ".join(f"{'M' if j == 0 else 'L'}{f.sx(p[0]):.1f},{f.sy(p[1]):.1f}"
                     for j, p in enumerate(good))
        out.append(f"<path d='{d}' fill='none' stroke='{color}' stroke-width='2.5'{dash}/>")
        # markers where they can be told apart; a dense curve is a line (its points in tooltips
        # would hide it)
        for p in [] if ref or len(good) > 40 else good:
            x, y = f.sx(p[0]), f.sy(p[1])
            err = p[2] if len(p) > 2 and p[2] else 0
            if err:
                lo, hi = f.sy(p[1] - err), f.sy(p[1] + err)
                out.append(f"<path d='M{x:.1f},{lo:.1f}L{x:.1f},{hi:.1f}M{x - 4:.1f},{lo:.1f}"
                           f"L{x + 4:.1f},{lo:.1f}M{x - 4:.1f},{hi:.1f}L{x + 4:.1f},{hi:.1f}' "
                           f"stroke='{color}' stroke-width='1.5' class='errbar'/>")
            tip = f"{name}: {_fmt(p[0])}, {_fmt_y(p[1], percent)}"
            if err:
                tip += f" ± {_fmt_y(err, percent)}"
            out.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='4' fill='{color}'>"
                       f"<title>{escape(tip)}</title></circle>")
    out.append("</svg>")
    return "".join(out)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both x and y (both higher is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def scatter_chart(points: list[dict], *, x_label: str, y_label: str, log_x: bool = True,
                  percent: bool = True) -> str:
    """`points`: {"name", "x", "y", "lo", "hi", "front"}: one dot each, the Pareto front joined
    by a line, y intervals as bars. Returns an <svg> element."""
    pts = [p for p in points if p["x"] and p["y"] is not None and (p["x"] > 0 or not log_x)]
    if not pts:
        return "<p class='muted'>no point has both a speed and a score</p>"
    ys = [v for p in pts for v in (p["y"], p.get("lo"), p.get("hi")) if v is not None]
    f = _Frame([p["x"] for p in pts], ys, log_x, percent, x_label, y_label, len(pts),
               pad_x=0.08)
    out = f.open()
    front = sorted((p for p in pts if p.get("front")), key=lambda p: p["x"])
    if len(front) > 1:
        d = " ".join(f"{'M' if j == 0 else 'L'}{f.sx(p['x']):.1f},{f.sy(p['y']):.1f}"
                     for j, p in enumerate(front))
        out.append(f"<path d='{d}' fill='none' stroke='#888' stroke-width='2' "
                   "stroke-dasharray='6,4' class='front'/>")
    for i, p in enumerate(pts):
        color = PALETTE[i % len(PALETTE)]
        x, y = f.sx(p["x"]), f.sy(p["y"])
        if p.get("lo") is not None and p.get("hi") is not None:
            out.append(f"<path d='M{x:.1f},{f.sy(p['lo']):.1f}L{x:.1f},{f.sy(p['hi']):.1f}' "
                       f"stroke='{color}' stroke-width='1.5' class='errbar'/>")
        ring = " stroke='#000' stroke-width='2'" if p.get("front") else ""
        tip = f"{p['name']}: {_fmt(p['x'])}, {_fmt_y(p['y'], percent)}"
        out.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='7' fill='{color}'{ring}>"
                   f"<title>{escape(tip)}</title></circle>")
        out += f.legend(i, p["name"] + (" (Pareto front)" if p.get("front") else ""), color,
                        "", line=False)
    out.append("</svg>")
    return "".join(out)
