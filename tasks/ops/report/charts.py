"""Charts as inline SVG, drawn here: the report opens offline, in any browser, with no script and no CDN.

Each chart is a `<figure class="chart" data-chart="<id>">` so a test (and a person's browser search) finds it by
name. Two kinds cover the report: horizontal bars (counts by category, one or two series) and histograms (a signal's
distribution over kept and rejected rows, with the configured threshold drawn).
"""

from __future__ import annotations

import html

import numpy as np

KEPT, REJECTED, OTHERS, THRESHOLD = "#3b7dd8", "#d8613b", "#e8b89c", "#222"
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
              thresholds: list[float] | None = None, bins: int = 30, names: tuple[str, ...] = ("kept", "rejected"),
              note: str = "", others: np.ndarray | None = None, x_title: str = "value") -> str:
    """A signal's distribution: kept rows, rows rejected (by this signal's rule, when `others` holds the rows
    rejected by any other rule) stacked per bin; thresholds as dashed lines; axis titles. Values past the 0.5th and
    99.5th percentiles are clipped into the end bins so one outlier cannot flatten the rest; a heavy right tail
    (non-negative values whose 99.5th percentile is over 100x the median and over 100) is drawn on a log axis.
    A threshold outside every value (Gopher's 100,000 words) is named in the caption instead of stretching the axis."""
    groups = [np.asarray(a if a is not None else np.zeros(0), dtype=np.float64) for a in (kept, rejected, others)]
    groups = [a[np.isfinite(a)] for a in groups]
    both = np.concatenate(groups)
    if both.size == 0:
        return _figure(chart_id, title, '<p class="muted">no values</p>', note)
    lo, hi = (float(v) for v in np.percentile(both, [0.5, 99.5]))
    median = float(np.median(both))
    log = lo >= 0 and hi > 100 and hi > 100 * max(median, 1e-12)
    marks = [t for t in (thresholds or []) if np.isfinite(t)]
    outside = [t for t in marks if not both.min() <= t <= both.max()]
    marks = [t for t in marks if both.min() <= t <= both.max()]
    lo, hi = min([lo, *marks]), max([hi, *marks])
    if outside:
        note = (note + "; " if note else "") + "threshold " + ", ".join(_fmt(t) for t in outside) + \
            " beyond the data's range (not drawn)"
    scale = (lambda v: np.log10(np.asarray(v, dtype=np.float64) + 1.0)) if log else (lambda v: np.asarray(v))
    slo, shi = float(scale(lo)), float(scale(hi))
    if shi <= slo:
        shi = slo + 1.0
    edges = np.linspace(slo, shi, bins + 1)
    counts = [np.histogram(np.clip(scale(a), slo, shi), edges)[0] for a in groups]
    top = max(int(sum(counts).max()), 1)
    plot_w, plot_h, left, base = WIDTH - 80, 150, 60, 175
    bw = plot_w / bins
    colors = [KEPT, REJECTED, OTHERS]
    unscale = (lambda x: 10 ** x - 1.0) if log else (lambda x: x)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="240" role="img">',
             f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#999"/>',
             f'<text x="{left - 4}" y="{base - plot_h + 8}" font-size="10" text-anchor="end">{top:,}</text>',
             f'<text x="{left - 4}" y="{base}" font-size="10" text-anchor="end">0</text>',
             f'<text class="axis-title" x="12" y="{base - plot_h / 2}" font-size="10" text-anchor="middle" '
             f'transform="rotate(-90 12 {base - plot_h / 2})">rows</text>',
             f'<text class="axis-title" x="{left + plot_w / 2}" y="{base + 28}" font-size="10" text-anchor="middle">'
             f'{html.escape(x_title)}{" (log scale)" if log else ""}</text>']
    for b in range(bins):
        x, y = left + b * bw, base
        tip = f"{_fmt(unscale(edges[b]))} to {_fmt(unscale(edges[b + 1]))}: " + ", ".join(
            f"{c[b]:,} {n}" for c, n in zip(counts, names, strict=False))
        rects = []
        for c, color in zip(counts, colors, strict=False):
            h = plot_h * c[b] / top
            if h:
                rects.append(f'<rect x="{x:.1f}" y="{y - h:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" '
                             f'fill="{color}"/>')
                y -= h
        parts.append(f'<g><title>{html.escape(tip)}</title>{"".join(rects)}</g>')
    for t in marks:
        x = left + plot_w * (float(scale(t)) - slo) / (shi - slo)
        anchor, dx = ("end", -3) if x > left + plot_w * 0.75 else ("start", 3)
        parts.append(f'<line class="threshold" x1="{x:.1f}" y1="{base - plot_h - 5}" x2="{x:.1f}" y2="{base}" '
                     f'stroke="{THRESHOLD}" stroke-dasharray="4 3"/><text x="{x + dx:.1f}" y="{base - plot_h + 3}" '
                     f'font-size="10" text-anchor="{anchor}">threshold {_fmt(t)}</text>')
    for frac in (0, 0.5, 1):
        parts.append(f'<text x="{left + plot_w * frac:.1f}" y="{base + 14}" font-size="10" text-anchor="middle">'
                     f'{_fmt(unscale(slo + (shi - slo) * frac))}</text>')
    x = left
    for a, n, color in zip(groups, names, colors, strict=False):
        if a.size or n == names[0]:
            parts.append(f'<rect x="{x}" y="221" width="10" height="10" fill="{color}"/><text x="{x + 14}" y="230" '
                         f'font-size="11">{html.escape(n)} ({a.size:,})</text>')
            x += 200
    parts.append("</svg>")
    return _figure(chart_id, title, "".join(parts), note)
