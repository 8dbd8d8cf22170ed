"""The report's charts: inline SVG drawn here, without a plotting library (the page itself is
the template ``templates/report.html.j2``). Labels are escaped here; every value is made a
finite number first, so NaN or Infinity never reaches the drawing."""

from __future__ import annotations

import html
import math
import typing as t

from target_everflow.report.data import finite

COLORS = {
    "delivered": "#2e7d32",
    "dead_lettered": "#c62828",
    "in_doubt": "#ef8f00",
    "confirmed": "#1565c0",
    "pending": "#90a4ae",
    "rejected": "#c62828",
    "not_found": "#6a1b9a",
    "unchecked": "#d5dbe0",
    "amount": "#00796b",
    "too_old": "#8d6e63",
    "rejected_age": "#ad1457",
}
LABELS = {
    "delivered": "Delivered",
    "dead_lettered": "Dead-lettered",
    "in_doubt": "In doubt",
    "confirmed": "Confirmed",
    "pending": "Pending",
    "rejected": "Rejected",
    "not_found": "Not found",
    "unchecked": "Unchecked",
    "amount": "Amount",
    "too_old": "Skipped as too old",
    "rejected_age": "Rejected as too late",
}


def esc(value: t.Any) -> str:
    """HTML-escaped text (quotes too: safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def count_text(n: t.Any) -> str:
    """A count as shown ("1,234"); "" for what is not a finite number."""
    value = finite(n)
    return f"{int(value):,}" if value or n == 0 else ""


def money_text(x: t.Any) -> str:
    """An amount as shown ("1,234.50")."""
    return f"{finite(x):,.2f}"


def _axis(value: float, *, whole: bool) -> float:
    """The top of a 4-step axis at or above ``value``: 4 x a 1, 2, 2.5 or 5 x 10^k step (a
    whole number of at least 1 for counts)."""
    if value <= 0:
        return 4.0
    wanted = value / 4
    power = 10 ** math.floor(math.log10(wanted))
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * power
        if whole and (step < 1 or step != int(step)):
            continue
        if step >= wanted - 1e-9:
            return 4 * step
    return 40 * power if not whole else 4 * max(1, math.ceil(wanted))


def column_chart(
    chart_id: str,
    labels: list[str],
    series: list[tuple[str, list[float]]],
    *,
    money: bool = False,
    height: int = 240,
) -> str:
    """Stacked columns, one per label (a day), one colour per series; inline SVG."""
    width, left, right, top, bottom = 960, 64, 12, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    series = [(name, [max(0.0, finite(v)) for v in values]) for name, values in series]
    totals = [finite(sum(values[i] for _, values in series)) for i in range(len(labels))]
    ceiling = _axis(max(totals, default=0), whole=not money)
    fmt = money_text if money else count_text
    parts = [
        f'<svg id="{esc(chart_id)}" class="chart" viewBox="0 0 {width} {height}" '
        f'preserveAspectRatio="xMidYMid meet" role="img" xmlns="http://www.w3.org/2000/svg">'
    ]
    for k in range(5):
        y = top + plot_h - plot_h * k / 4
        value = ceiling * k / 4
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        label = money_text(value) if money else f"{value:,.0f}"
        parts.append(
            f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(label)}</text>'
        )
    slot = plot_w / max(len(labels), 1)
    bar = max(1.0, min(slot * 0.72, 48.0))
    every = max(1, math.ceil(len(labels) / 12))
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar) / 2
        base: float = top + plot_h
        for name, values in series:
            value = values[i]
            if value <= 0:
                continue
            h = plot_h * value / ceiling
            base -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{COLORS[name]}" data-series="{esc(name)}" data-label="{esc(label)}" '
                f'data-value="{value:.15g}"><title>{esc(label)}: {esc(fmt(value))} '
                f"{esc(LABELS[name].lower())}</title></rect>"
            )
        if i % every == 0 or i == len(labels) - 1 and len(labels) <= 12:
            parts.append(
                f'<text class="axis" x="{left + slot * i + slot / 2:.1f}" y="{height - 12}" '
                f'text-anchor="middle">{esc(label[5:] if len(label) == 10 else label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(chart_id: str, labels: list[str], series: list[tuple[str, list[float]]]) -> str:
    """Stacked horizontal bars, one per label (an event); inline SVG."""
    row, left, right, top = 28, 220, 70, 6
    width = 960
    height = top * 2 + row * max(len(labels), 1)
    plot_w = width - left - right
    series = [(name, [max(0.0, finite(v)) for v in values]) for name, values in series]
    totals = [finite(sum(values[i] for _, values in series)) for i in range(len(labels))]
    ceiling = max(totals, default=0) or 1
    parts = [
        f'<svg id="{esc(chart_id)}" class="chart" viewBox="0 0 {width} {height}" '
        f'preserveAspectRatio="xMidYMid meet" role="img" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, label in enumerate(labels):
        y = top + row * i
        shown = label if len(label) <= 32 else label[:31] + "\u2026"
        parts.append(
            f'<text class="axis" x="{left - 8}" y="{y + row / 2 + 4:.1f}" text-anchor="end">'
            f"<title>{esc(label)}</title>{esc(shown)}</text>"
        )
        x = float(left)
        for name, values in series:
            value = values[i]
            if value <= 0:
                continue
            w = plot_w * value / ceiling
            parts.append(
                f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{row - 8}" '
                f'fill="{COLORS[name]}" data-series="{esc(name)}" data-label="{esc(label)}" '
                f'data-value="{value:.15g}"><title>{esc(label)}: {esc(count_text(value))} '
                f"{esc(LABELS[name].lower())}</title></rect>"
            )
            x += w
        parts.append(
            f'<text class="axis" x="{x + 6:.1f}" y="{y + row / 2 + 4:.1f}">{esc(count_text(totals[i]))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
