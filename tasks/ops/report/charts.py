"""Charts as inline SVG, drawn here: the report opens offline, in any browser, with no script and no CDN.

Each chart is a `<figure class="chart" data-chart="<id>">` so a test (and a person's browser search) finds it by
name. Two kinds cover the report: horizontal bars (counts by category, one or two series) and histograms (a signal's
distribution over kept and rejected rows, with the configured threshold drawn).
"""

from __future__ import annotations

import html

import numpy as np

KEPT, REJECTED, THRESHOLD = "#3b7dd8", "#d8613b", "#222"
WIDTH, LABEL_W = 720, 230


def _figure(chart_id: str, title: str, svg: str, note: str = "") -> str:
    caption = html.escape(title) + (f" <small>{html.escape(note)}</small>" if note else "")
    return (f'<figure class="chart" data-chart="{html.escape(chart_id)}"><figcaption>{caption}</figcaption>{svg}'
            "</figure>")


def _fmt(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.3g}"


def bars(chart_id: str, title: str, labels: list[str], series: dict[str, list[float]], note: str = "") -> str:
    """Horizontal bars, one row per label, one bar per series (at most two: kept/rejected, before/after)."""
    colors = [KEPT, REJECTED]
    names = list(series)
    top = max([max(v, default=0) for v in series.values()] + [1])
    row_h = 8 + 14 * len(names)
    height = 24 + row_h * len(labels)
    span = WIDTH - LABEL_W - 90
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" role="img">']
    if len(names) > 1:
        parts += [f'<rect x="{LABEL_W + 160 * i}" y="4" width="10" height="10" fill="{colors[i]}"/>'
                  f'<text x="{LABEL_W + 14 + 160 * i}" y="13" font-size="11">{html.escape(n)}</text>'
                  for i, n in enumerate(names)]
    for r, label in enumerate(labels):
        y0 = 22 + r * row_h
        parts.append(f'<text x="{LABEL_W - 6}" y="{y0 + row_h / 2 + 3}" font-size="11" text-anchor="end">'
                     f'{html.escape(label[:38])}</text>')
        for i, name in enumerate(names):
            value = series[name][r]
            w = max(1.0, span * value / top) if value else 0
            y = y0 + 4 + 14 * i
            parts.append(f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="12" fill="{colors[i]}">'
                         f'<title>{html.escape(label)} ({html.escape(name)}): {_fmt(value)}</title></rect>'
                         f'<text x="{LABEL_W + w + 4:.1f}" y="{y + 10}" font-size="10">{_fmt(value)}</text>')
    parts.append("</svg>")
    return _figure(chart_id, title, "".join(parts), note)


def histogram(chart_id: str, title: str, kept: np.ndarray, rejected: np.ndarray | None = None,
              thresholds: list[float] | None = None, bins: int = 30, names: tuple[str, str] = ("kept", "rejected"),
              note: str = "") -> str:
    """A signal's distribution, kept and rejected rows stacked per bin on one axis, thresholds as dashed lines.
    Values past the 0.5th/99.5th percentiles are clipped into the end bins so one outlier cannot flatten it."""
    rejected = rejected if rejected is not None else np.zeros(0)
    kept, rejected = (np.asarray(a, dtype=np.float64) for a in (kept, rejected))
    kept, rejected = kept[np.isfinite(kept)], rejected[np.isfinite(rejected)]
    both = np.concatenate([kept, rejected])
    if both.size == 0:
        return _figure(chart_id, title, '<p class="muted">no values</p>', note)
    lo, hi = np.percentile(both, [0.5, 99.5])
    marks = [t for t in (thresholds or []) if np.isfinite(t)]
    lo, hi = min([lo, *marks]), max([hi, *marks])
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram(np.clip(a, lo, hi), edges)[0] for a in (kept, rejected)]
    top = max(int((counts[0] + counts[1]).max()), 1)
    plot_w, plot_h, left, base = WIDTH - 70, 150, 50, 175
    bw = plot_w / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="215" role="img">',
             f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#999"/>',
             f'<text x="{left - 4}" y="{base - plot_h + 8}" font-size="10" text-anchor="end">{top:,}</text>',
             f'<text x="{left - 4}" y="{base}" font-size="10" text-anchor="end">0</text>']
    for b in range(bins):
        x = left + b * bw
        h0 = plot_h * counts[0][b] / top
        h1 = plot_h * counts[1][b] / top
        tip = f"{_fmt(edges[b])} to {_fmt(edges[b + 1])}: {counts[0][b]:,} {names[0]}, {counts[1][b]:,} {names[1]}"
        parts.append(f'<g><title>{html.escape(tip)}</title>'
                     f'<rect x="{x:.1f}" y="{base - h0:.1f}" width="{bw - 1:.1f}" height="{h0:.1f}" fill="{KEPT}"/>'
                     f'<rect x="{x:.1f}" y="{base - h0 - h1:.1f}" width="{bw - 1:.1f}" height="{h1:.1f}" '
                     f'fill="{REJECTED}"/></g>')
    for t in marks:
        x = left + plot_w * (t - lo) / (hi - lo)
        parts.append(f'<line class="threshold" x1="{x:.1f}" y1="{base - plot_h - 5}" x2="{x:.1f}" y2="{base}" '
                     f'stroke="{THRESHOLD}" stroke-dasharray="4 3"/><text x="{x + 3:.1f}" y="{base - plot_h + 3}" '
                     f'font-size="10">threshold {_fmt(t)}</text>')
    for frac in (0, 0.5, 1):
        parts.append(f'<text x="{left + plot_w * frac:.1f}" y="{base + 14}" font-size="10" text-anchor="middle">'
                     f'{_fmt(lo + (hi - lo) * frac)}</text>')
    parts += [f'<rect x="{left}" y="196" width="10" height="10" fill="{KEPT}"/><text x="{left + 14}" y="205" '
              f'font-size="11">{names[0]} ({kept.size:,})</text>']
    if rejected.size:
        parts += [f'<rect x="{left + 170}" y="196" width="10" height="10" fill="{REJECTED}"/><text x="{left + 184}" '
                  f'y="205" font-size="11">{names[1]} ({rejected.size:,})</text>']
    parts.append("</svg>")
    return _figure(chart_id, title, "".join(parts), note)
