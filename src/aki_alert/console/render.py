"""The console's pages as HTML strings: pure functions of the data in `queries` (no I/O).

Plain Python f-strings with `html.escape` on every value that came from the state, rather
than a templating library: none is installed, the pages are few and small, and adding a
dependency (and its autoescape configuration) to a process that handles patient data buys
little. The rule is mechanical: every interpolated value passes through `e()` (or is a number
formatted here); markup is only ever written literally in this module. The chart is inline
SVG built the same way; CSS is inline; there is no JavaScript, so the strict CSP holds.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from ..timeutil import DAY, HOUR, age_years, format_csv_time
from .queries import (CORRECTED, DEAD_LETTERS_LIMIT, MERGED, REMOVED, Alert, AlertList,
                      PatientView, ProcessMetrics, Result, Revision, ServiceView)

DEAD_LETTERS_SHOWN = DEAD_LETTERS_LIMIT


def e(value: object) -> str:
    """Escape for HTML text and attribute values (quotes included)."""
    return html.escape("" if value is None else str(value), quote=True)


# --- formatting -----------------------------------------------------------------------------

def fmt_sample(t: int | None) -> str:
    """A hospital time (seconds on the feed's axis) as `YYYY-MM-DD HH:MM`."""
    return "—" if t is None else format_csv_time(t)[:16]


def fmt_date(t: int | None) -> str:
    return "—" if t is None else format_csv_time(t)[:10]


def fmt_wall(t: float | None) -> str:
    """A wall-clock instant (time.time()) in UTC."""
    if t is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + " UTC"


def fmt_ago(t: float | None, now: float) -> str:
    if t is None:
        return "never"
    s = max(0.0, now - t)
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 90 * 60:
        return f"{s / 60:.0f} min ago"
    if s < 36 * 3600:
        return f"{s / 3600:.1f} h ago"
    return f"{s / 86400:.1f} days ago"


def fmt_num(x: float | None, digits: int = 0) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.{digits}f}"


def fmt_score(a: Alert) -> str:
    if a.score is None:
        return "—"
    text = f"{a.score:.3g}"
    if a.threshold is not None:
        text += f" ≥ {a.threshold:.3g}" if a.score >= a.threshold else f" < {a.threshold:.3g}"
    return text


def stage_badge(stage: int | None) -> str:
    if not stage:
        return '<span class="badge s0">no NHS stage</span>'
    return f'<span class="badge s{int(stage)}">stage {int(stage)}</span>'


DELIVERY_LABEL = {"delivered": "delivered", "retrying": "retrying", "pending": "pending",
                  "dead": "dead-lettered", "suppressed": "suppressed (replay)"}


def delivery_badge(a: Alert) -> str:
    label = DELIVERY_LABEL.get(a.delivery, a.delivery)
    badge = f'<span class="badge d-{e(a.delivery)}">{e(label)}</span>'
    if a.last_error and a.delivery in ("retrying", "dead"):
        badge += f'<div class="err">{e(a.last_error)}</div>'
    return badge


def patient_href(mrn: str) -> str:
    return "/patients/" + quote(mrn, safe="")


# --- layout ---------------------------------------------------------------------------------

CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b2733;
background:#f5f7fa}
header{background:#17324d;color:#fff;padding:10px 24px;display:flex;gap:28px;align-items:baseline}
header .brand{font-weight:700;font-size:16px;letter-spacing:.02em}
header a{color:#cfe0f2;text-decoration:none;padding:2px 0}
header a.on{color:#fff;border-bottom:2px solid #fff}
main{padding:16px 24px 40px;max-width:1280px}
h1{font-size:20px;margin:6px 0 12px}h2{font-size:16px;margin:22px 0 8px}
a{color:#1f5fa8}
table{border-collapse:collapse;background:#fff;width:100%;box-shadow:0 1px 2px #0001}
th,td{padding:5px 8px;border-bottom:1px solid #e3e8ee;text-align:left;vertical-align:top}
th{background:#eef2f6;font-weight:600;font-size:12px;color:#44546a;white-space:nowrap}
td.nw{white-space:nowrap}
table.narrow{width:auto;min-width:520px}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.hl td{background:#fff4f2}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600;
white-space:nowrap}
.s0{background:#e8ebef;color:#445}.s1{background:#fff1c2;color:#7a5200}
.s2{background:#ffd9b3;color:#8a3b00}.s3{background:#ffc9c4;color:#8e1208}
.d-delivered{background:#d6f5de;color:#14632d}.d-retrying{background:#fff1c2;color:#7a5200}
.d-pending{background:#e8ebef;color:#445}.d-dead{background:#ffc9c4;color:#8e1208}
.d-suppressed{background:#eef0f3;color:#667;font-style:italic}
.ok{background:#d6f5de;color:#14632d}.bad{background:#ffc9c4;color:#8e1208}
.warn{background:#fff1c2;color:#7a5200}
.err{color:#8e1208;font-size:12px;max-width:380px;overflow-wrap:anywhere}
.muted{color:#667788}.small{font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0 4px}
.card{background:#fff;padding:10px 14px;box-shadow:0 1px 2px #0001;min-width:170px;
border-radius:4px}
.card .k{font-size:12px;color:#667788}
.card .v{font-size:18px;font-weight:600;margin-top:2px}
.explain{background:#fff;border-left:4px solid #c0392b;padding:8px 12px;margin:8px 0;
box-shadow:0 1px 2px #0001}
.chart{background:#fff;box-shadow:0 1px 2px #0001;padding:8px;border-radius:4px}
.chart svg{width:100%;height:auto;display:block}
.legend{display:flex;flex-wrap:wrap;gap:16px;font-size:12px;color:#44546a;margin:6px 4px 0}
.sw{display:inline-block;width:14px;height:10px;margin-right:5px;vertical-align:-1px}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;background:#fff;
padding:10px 14px;margin:0;box-shadow:0 1px 2px #0001}
dl.kv dt{color:#667788}dl.kv dd{margin:0;overflow-wrap:anywhere}
code{font-size:12px;background:#eef2f6;padding:0 4px;border-radius:3px;overflow-wrap:anywhere}
.bars{display:flex;gap:6px;align-items:flex-end;height:60px}
.bars div{background:#4a7fb5;width:34px;min-height:1px}
.bars span{display:block;font-size:11px;color:#667788;text-align:center}
nav.pager{margin:10px 0}
.merge{background:#fff;border-left:4px solid #1f5fa8;padding:8px 12px;margin:8px 0;
box-shadow:0 1px 2px #0001}
tr.revision td{color:#667788}tr.revision del{color:#8e1208}
.prelim{background:#fff1c2;color:#7a5200}.corr{background:#e3ecf7;color:#1f4e79}
.gone{background:#ffc9c4;color:#8e1208}
"""


def layout(title: str, body: str, active: str = "") -> str:
    def link(href: str, label: str, key: str) -> str:
        on = ' class="on"' if key == active else ""
        return f'<a href="{href}"{on}>{label}</a>'

    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{e(title)} · aki-alert</title><style>{CSS}</style></head><body>"
        f'<header><span class="brand">aki-alert console</span>'
        f'{link("/", "Alerts", "alerts")}{link("/service", "Service", "service")}</header>'
        f"<main>{body}</main></body></html>\n"
    )


def error_page(status: int, title: str, message: str) -> str:
    return layout(title, f"<h1>{status} · {e(title)}</h1><p>{e(message)}</p>"
                  '<p><a href="/">Back to the alerts</a></p>')


# --- alerts ---------------------------------------------------------------------------------

def alerts_page(data: AlertList, now: float, before: int | None = None) -> str:
    counts = " ".join(
        f'<span class="badge d-{e(k)}">{e(DELIVERY_LABEL.get(k, k))}: {n}</span>'
        for k, n in sorted(data.by_status.items()))
    rows = []
    for a in data.alerts:
        rows.append(
            f'<tr class="alert" data-mrn="{e(a.mrn)}" data-time="{a.result_time}" '
            f'data-status="{e(a.delivery)}">'
            f'<td class="time nw">{e(fmt_sample(a.result_time))}</td>'
            f'<td class="mrn"><a href="{e(patient_href(a.mrn))}">{e(a.mrn)}</a></td>'
            f'<td class="nw">{e(a.name or "—")}</td>'
            f"<td>{stage_badge(a.stage)}</td>"
            f'<td class="n">{fmt_num(a.value)}</td>'
            f'<td class="n">{fmt_num(a.baseline)}</td>'
            f'<td class="n">{fmt_num(a.ratio, 2)}{"×" if a.ratio is not None else ""}</td>'
            f'<td class="nw">{e(a.detector or "—")} '
            f'<span class="muted small">{e(a.version or "")}</span></td>'
            f'<td class="n nw">{e(fmt_score(a))}</td>'
            f"<td>{delivery_badge(a)}</td>"
            f'<td class="n">{a.attempts}</td>'
            f'<td class="small muted nw">{e(fmt_wall(a.created_at))}</td></tr>')
    if not rows:
        table = '<p class="muted">No pages yet.</p>'
    else:
        table = (
            '<table id="alerts"><thead><tr><th>Sample time</th><th>MRN</th><th>Name</th>'
            '<th>Stage</th><th class="n">Creat. µmol/L</th><th class="n">Baseline</th>'
            '<th class="n">Ratio</th><th>Detector</th><th class="n">Score</th>'
            '<th>Delivery</th><th class="n">Attempts</th><th>Decided</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")
    nav = []
    if before is not None:
        nav.append('<a href="/">Newest</a>')
    if data.older_than is not None:
        nav.append(f'<a href="/?before={data.older_than}">Older pages →</a>')
    where = "older pages" if before is not None else "the latest pages"
    return layout("Alerts", (
        f"<h1>Alerts</h1><p class=\"muted\">Showing {len(data.alerts)} of {where}, newest "
        f"first. Times are the result's sample time (hospital clock).</p>"
        f'<div class="cards"><div class="card"><div class="k">Outbox</div>'
        f'<div class="v small">{counts or "empty"}</div></div></div>'
        f"{table}<nav class=\"pager\">{' · '.join(nav)}</nav>"), "alerts")


# --- the chart ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ChartPage:
    """A page drawn on the chart: its triggering result and the baseline it was compared with."""

    time: int
    value: float
    baseline: float | None
    window: str | None          # "RV1" (0–7 days before) or "RV2" (8–365 days), None unknown
    stage: int | None


def baseline_window(times: Sequence[int], values: Sequence[float], at: int,
                    baseline: float | None) -> str | None:
    """Which NHS reference value `baseline` was for a result at `at`: RV1 (lowest of the
    previous 0–7 days) or RV2 (median of 8–365 days before); None when neither matches."""
    if baseline is None:
        return None
    recent = [v for t, v in zip(times, values, strict=True) if at - 7 * DAY <= t < at]
    older = sorted(v for t, v in zip(times, values, strict=True)
                   if at - 365 * DAY <= t < at - 7 * DAY)
    if recent and abs(min(recent) - baseline) < 1e-6:
        return "RV1"
    if older:
        n = len(older)
        median = older[n // 2] if n % 2 else (older[n // 2 - 1] + older[n // 2]) / 2.0
        if abs(median - baseline) < 1e-6:
            return "RV2"
    return None


def nice_step(span: float, target: int = 5) -> float:
    """1, 2 or 5 × 10^k, so that about `target` steps cover `span`."""
    if span <= 0:
        return 1.0
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


_TIME_STEPS = (HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY,
               30 * DAY, 61 * DAY, 91 * DAY, 182 * DAY, 365 * DAY)


def time_ticks(t0: float, t1: float, max_ticks: int = 7) -> list[int]:
    step = next((s for s in _TIME_STEPS if (t1 - t0) / s <= max_ticks), _TIME_STEPS[-1])
    first = math.ceil(t0 / step) * step
    return list(range(int(first), int(t1) + 1, step))


# Geometry of the chart (SVG user units; the SVG scales to its container's width).
W, H = 900, 330
X0, X1, Y0, Y1 = 58, 770, 14, 262        # plot area; labels of lines to the right of X1
STRIP_Y = 290                             # the baseline-window strip under the axis


def _f(x: float) -> str:
    return f"{x:.1f}"


def chart_svg(results: Sequence[tuple[int, float]], pages: Sequence[ChartPage] = (),
              stays: Sequence[tuple[int, int | None]] = (),
              sources: Sequence[str] | None = None) -> str:
    """An inline SVG of creatinine over time.

    `results`: (time, µmol/L) ascending. Drawn: every result (class `result`, hollow when
    `sources` says it came from the history file) joined by a line; admission–discharge
    intervals shaded (class `stay`; an open stay runs to the chart's end); for each page a
    marker on its triggering result (class `trigger`) and its baseline (class `baseline`) as a
    solid line over the window that produced it, dashed on to the right edge; for the latest
    page, the NHS windows RV1 (0–7 days before) and RV2 (8–365 days) as bands under the time
    axis (class `window`) and the ×1.5/×2/×3 stage thresholds of its baseline (class
    `threshold`). Every element carries its data as `data-*` attributes.
    """
    if not results:
        return ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 900 60" role="img" '
                'aria-label="no creatinine results"><text x="20" y="35" fill="#667788">'
                "No creatinine results.</text></svg>")
    times = [t for t, _ in results]
    values = [v for _, v in results]
    t_lo, t_hi = times[0], times[-1]
    if t_hi - t_lo < DAY:
        t_lo, t_hi = t_lo - DAY // 2, t_hi + DAY // 2
    pad = (t_hi - t_lo) * 0.03
    t_lo, t_hi = t_lo - pad, t_hi + pad
    latest = pages[-1] if pages else None
    labels: list[tuple[float, str, str, str]] = []   # (y, text, colour, weight) right of X1
    top = max(values)
    for p in pages:
        if p.baseline is not None:
            top = max(top, p.baseline * 1.5)
    y_step = nice_step(top * 1.05)
    v_hi = math.ceil(top * 1.05 / y_step) * y_step

    def x(t: float) -> float:
        return X0 + (t - t_lo) / (t_hi - t_lo) * (X1 - X0)

    def y(v: float) -> float:
        return Y1 - v / v_hi * (Y1 - Y0)

    def clip(t: float) -> float:
        return min(max(t, t_lo), t_hi)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" '
           f'class="creatinine-chart" aria-label="creatinine results over time">',
           '<rect class="plot" x="{}" y="{}" width="{}" height="{}" fill="#fbfcfe" '
           'stroke="#c9d3de"/>'.format(X0, Y0, X1 - X0, Y1 - Y0)]
    # Admission–discharge intervals.
    for start, end in stays:
        a, b = clip(start), clip(t_hi if end is None else end)
        if b <= a:
            continue
        out.append(f'<rect class="stay" data-start="{start}" data-end="{e(end)}" x="{_f(x(a))}" '
                   f'y="{Y0}" width="{_f(x(b) - x(a))}" height="{Y1 - Y0}" fill="#dcebfa" '
                   f'opacity="0.75"><title>admitted {e(fmt_sample(start))} – '
                   f'{e(fmt_sample(end) if end is not None else "still admitted")}</title></rect>')
    # Grid and axes.
    v = 0.0
    while v <= v_hi + 1e-9:
        out.append(f'<line x1="{X0}" x2="{X1}" y1="{_f(y(v))}" y2="{_f(y(v))}" stroke="#e3e8ee"/>'
                   f'<text x="{X0 - 6}" y="{_f(y(v) + 4)}" text-anchor="end" font-size="11" '
                   f'fill="#556">{v:g}</text>')
        v += y_step
    for t in time_ticks(t_lo, t_hi):
        label = fmt_date(t) if t % DAY == 0 else fmt_sample(t)[5:]
        out.append(f'<line x1="{_f(x(t))}" x2="{_f(x(t))}" y1="{Y1}" y2="{Y1 + 4}" '
                   f'stroke="#889"/><text x="{_f(x(t))}" y="{Y1 + 17}" text-anchor="middle" '
                   f'font-size="11" fill="#556">{e(label)}</text>')
    out.append(f'<text x="14" y="{(Y0 + Y1) / 2:.0f}" font-size="11" fill="#556" '
               f'transform="rotate(-90 14 {(Y0 + Y1) / 2:.0f})" text-anchor="middle">'
               "creatinine µmol/L</text>")
    # The latest page's NHS windows and stage thresholds.
    if latest is not None:
        at = latest.time
        for cls, label, a, b in (("rv2", "RV2 window: 8–365 days before", at - 365 * DAY,
                                  at - 7 * DAY),
                                 ("rv1", "RV1 window: 0–7 days before", at - 7 * DAY, at)):
            ca, cb = clip(a), clip(b)
            fill = "#fde9a9" if cls == "rv1" else "#cdeed9"
            used = " (baseline)" if latest.window == cls.upper() else ""
            if cb > ca:
                out.append(
                    f'<rect class="window {cls}" data-start="{a}" data-end="{b}" '
                    f'x="{_f(x(ca))}" y="{STRIP_Y}" width="{_f(x(cb) - x(ca))}" height="16" '
                    f'fill="{fill}" stroke="#b9a"><title>{e(label)}{e(used)}</title></rect>')
                short = f"{cls.upper()}{used}"
                if x(cb) - x(ca) > 7 * len(short):
                    out.append(f'<text x="{_f((x(ca) + x(cb)) / 2)}" y="{STRIP_Y + 12}" '
                               f'font-size="11" text-anchor="middle" fill="#334">'
                               f"{e(short)}</text>")
                else:       # too narrow: the label goes beside the strip, past the trigger
                    out.append(f'<text x="{_f(x(cb) + 4)}" y="{STRIP_Y + 12}" font-size="11" '
                               f'fill="#334">{e(short)}</text>')
            for edge in (a, b):
                if t_lo < edge < t_hi:
                    out.append(f'<line class="window-edge" x1="{_f(x(edge))}" '
                               f'x2="{_f(x(edge))}" y1="{Y0}" y2="{STRIP_Y + 16}" '
                               'stroke="#99a" stroke-dasharray="2 3"/>')
        if latest.baseline is not None:
            for m, st in ((1.5, 1), (2.0, 2), (3.0, 3)):
                level = latest.baseline * m
                if level <= v_hi:
                    out.append(f'<line class="threshold" data-value="{level:.6g}" x1="{X0}" '
                               f'x2="{X1}" y1="{_f(y(level))}" y2="{_f(y(level))}" '
                               'stroke="#e0a0a0" stroke-dasharray="1 4"/>')
                    labels.append((y(level), f"×{m:g}: stage {st}", "#b06060", ""))
    # Baselines.
    for p in pages:
        if p.baseline is None:
            continue
        by = _f(y(p.baseline))
        if p.window == "RV1":
            a, b = p.time - 7 * DAY, p.time
        elif p.window == "RV2":
            a, b = p.time - 365 * DAY, p.time - 7 * DAY
        else:
            a, b = t_lo, p.time
        ca, cb = clip(a), clip(b)
        out.append(f'<g class="baseline" data-value="{p.baseline:.6g}" data-time="{p.time}" '
                   f'data-window="{e(p.window or "")}">'
                   f'<line x1="{_f(x(ca))}" x2="{_f(x(cb))}" y1="{by}" y2="{by}" '
                   'stroke="#e67e22" stroke-width="2.5"/>'
                   f'<line x1="{_f(x(cb))}" x2="{X1}" y1="{by}" y2="{by}" stroke="#e67e22" '
                   'stroke-width="1.5" stroke-dasharray="6 4"/></g>')
        labels.append((y(p.baseline), f"baseline {p.baseline:.0f}"
                       f"{' (' + p.window + ')' if p.window else ''}", "#b35c00", "700"))
    # Results.
    points = " ".join(f"{_f(x(t))},{_f(y(v))}" for t, v in results)
    out.append(f'<polyline class="trend" points="{points}" fill="none" stroke="#1f4e79" '
               'stroke-width="1.3" opacity="0.7"/>')
    for i, (t, v) in enumerate(results):
        hist = sources is not None and sources[i] == "history"
        fill = "#fff" if hist else "#1f4e79"
        out.append(f'<circle class="result{" history" if hist else ""}" data-time="{t}" '
                   f'data-value="{v:.6g}" cx="{_f(x(t))}" cy="{_f(y(v))}" r="3.2" '
                   f'fill="{fill}" stroke="#1f4e79" stroke-width="1.3"><title>'
                   f'{e(fmt_sample(t))}: {v:.0f} µmol/L{" (history)" if hist else ""}'
                   "</title></circle>")
    # Labels of the horizontal lines, in the right margin, pushed apart where they would touch.
    labels.sort(key=lambda lab: lab[0])
    placed: list[float] = []
    for ly, text, colour, weight in labels:
        ly = max(ly + 4, placed[-1] + 13) if placed else ly + 4
        placed.append(ly)
        bold = f' font-weight="{weight}"' if weight else ""
        out.append(f'<text class="line-label" x="{X1 + 6}" y="{_f(ly)}" font-size="11" '
                   f'fill="{colour}"{bold}>{e(text)}</text>')
    # Triggering results, on top.
    for p in pages:
        cx, cy = _f(x(p.time)), _f(y(p.value))
        label = f"page · stage {p.stage}" if p.stage else "page"
        out.append(f'<g class="trigger" data-time="{p.time}" data-value="{p.value:.6g}" '
                   f'data-stage="{e(p.stage)}"><circle cx="{cx}" cy="{cy}" r="9" fill="none" '
                   'stroke="#c0392b" stroke-width="2.5"/>'
                   f'<circle cx="{cx}" cy="{cy}" r="4" fill="#c0392b"/>'
                   f'<text x="{cx}" y="{_f(max(Y0 + 10, y(p.value) - 14))}" '
                   f'text-anchor="middle" font-size="12" font-weight="700" fill="#c0392b">'
                   f"{e(label)}</text><title>paged: {e(fmt_sample(p.time))}, "
                   f"{p.value:.0f} µmol/L</title></g>")
    out.append("</svg>")
    return "".join(out)


# --- one patient ----------------------------------------------------------------------------

WINDOW_TEXT = {"RV1": "RV1, the lowest result of the previous 7 days",
               "RV2": "RV2, the median of the results 8–365 days before"}


def _explain(a: Alert, view: PatientView, window: str | None) -> str:
    parts = [f"<strong>Paged for the result of {e(fmt_sample(a.result_time))}</strong>: "]
    if a.value is not None:
        parts.append(f"creatinine {a.value:.0f} µmol/L")
    else:
        gone = next((r for r in reversed(view.revisions)
                     if r.time == a.result_time and r.action == REMOVED), None)
        if gone is not None:
            label = WITHDRAWN_LABEL.get(gone.withdrawn or "", "withdrawn")
            parts.append(f"creatinine {gone.value:.0f} µmol/L, since "
                         f'<span class="badge gone">{e(label)}</span> by the lab')
    if a.baseline is not None and a.ratio is not None:
        parts.append(f" is {a.ratio:.2f}× the baseline {a.baseline:.0f} µmol/L"
                     f" ({e(WINDOW_TEXT.get(window or '', 'NHS reference value'))})")
    rise = None
    if a.stage == 1 and (a.ratio is None or a.ratio < 1.5) and a.value is not None:
        prior = [r for r in view.results if a.result_time - 48 * HOUR <= r.time < a.result_time]
        if prior:
            low = min(prior, key=lambda r: r.value)
            rise = (f"; a rise of {a.value - low.value:.0f} µmol/L over the result of "
                    f"{e(fmt_sample(low.time))} ({low.value:.0f} µmol/L), more than 26 µmol/L "
                    "within 48 hours")
    parts.append(rise or "")
    parts.append(f" → {stage_badge(a.stage)}. ")
    parts.append(f"Detector <code>{e(a.detector or '?')}</code> version "
                 f"<code>{e(a.version or '?')}</code>: score {e(fmt_score(a))}. ")
    parts.append(f"Delivery: {delivery_badge(a)} after {a.attempts} attempt(s)")
    if a.delivered_at is not None:
        parts.append(f", accepted {e(fmt_wall(a.delivered_at))}")
    parts.append(".")
    return f'<div class="explain">{"".join(parts)}</div>'


def chart_pages(view: PatientView) -> list[ChartPage]:
    times = [r.time for r in view.results]
    values = [r.value for r in view.results]
    by_time = dict(zip(times, values, strict=True))
    out = []
    for a in view.pages:
        value = a.value if a.value is not None else by_time.get(a.result_time)
        if value is None:
            continue
        out.append(ChartPage(a.result_time, value, a.baseline,
                             baseline_window(times, values, a.result_time, a.baseline), a.stage))
    return out


STATUS_LABEL = {"F": "final", "C": "corrected", "P": "preliminary"}
WITHDRAWN_LABEL = {"W": "withdrawn (wrong patient)", "D": "withdrawn (deleted)"}


def fmt_value(value: float, comparator: str | None) -> str:
    """A result as the lab sent it: `94.0`, or a censored one with its bound, `<10.0`."""
    return f"{comparator or ''}{value:.1f}"


def status_badge(status: str) -> str:
    label = STATUS_LABEL.get(status, status)
    if status == "P":
        return f'<span class="badge prelim">{e(label)}</span>'
    if status == "C":
        return f'<span class="badge corr">{e(label)}</span>'
    return e(label)


def _merge_notes(view: PatientView) -> str:
    """The merge pointers: where a merged-away number lives on, and which numbers were merged
    into this patient."""
    out = []
    m = view.merged_into
    if m is not None:
        out.append(f'<div class="merge" id="merged-into">This patient\'s number '
                   f"<strong>{e(m.old_mrn)}</strong> was merged into "
                   f'<a href="{e(patient_href(m.new_mrn))}">{e(m.new_mrn)}</a> on '
                   f"{e(fmt_wall(m.merged_at))}: its results, admissions and pages are filed "
                   f"under {e(m.new_mrn)} now.</div>")
    for m in view.merged_from:
        out.append(f'<div class="merge merged-from" data-mrn="{e(m.old_mrn)}">Number '
                   f'<a href="{e(patient_href(m.old_mrn))}">{e(m.old_mrn)}</a> was merged into '
                   f"this patient ({e(m.new_mrn)}) on {e(fmt_wall(m.merged_at))}: its results, "
                   "admissions and pages are shown here.</div>")
    return "".join(out)


def _result_rows(view: PatientView, paged: set[int]) -> str:
    """The results newest first, each followed by the values it replaced or that were taken
    out at its sample time (struck through), and the values withdrawn at times that hold no
    result any more."""
    current = {r.time: r for r in view.results}
    moved_in: dict[int, str] = {}           # sample time -> the merged number it came from
    shown: list[Revision] = []
    corrected_values = {(r.time, r.value) for r in view.revisions if r.action == CORRECTED}
    for rev in view.revisions:
        if rev.action == MERGED and rev.mrn != view.mrn:
            now = current.get(rev.time)
            if now is not None and (now.value == rev.value
                                    or (rev.time, rev.value) in corrected_values):
                moved_in[rev.time] = rev.mrn        # kept: it is the current result
                continue
        shown.append(rev)
    entries: list[tuple[int, int, float, Result | Revision]] = []
    entries += [(r.time, 0, 0.0, r) for r in view.results]
    entries += [(r.time, 1, -r.changed_at, r) for r in shown]
    entries.sort(key=lambda x: (-x[0], x[1], x[2]))
    rows = []
    for _, _, _, item in entries:
        if isinstance(item, Result):
            note = []
            if item.time in paged:
                note.append("paged")
            if item.time in moved_in:
                note.append(f"from {e(moved_in[item.time])} (merged)")
            rows.append(
                f'<tr class="result{" hl" if item.time in paged else ""}" '
                f'data-time="{item.time}" data-status="{e(item.status)}">'
                f"<td>{e(fmt_sample(item.time))}</td>"
                f'<td class="n">{e(fmt_value(item.value, item.comparator))}</td>'
                f"<td>{status_badge(item.status)}</td><td>{e(item.source)}</td>"
                f"<td>{'; '.join(note)}</td></tr>")
            continue
        rev = item
        if rev.action == CORRECTED:
            what = '<span class="badge corr">corrected</span>'
        elif rev.action == REMOVED:
            label = WITHDRAWN_LABEL.get(rev.withdrawn or "", "withdrawn")
            what = f'<span class="badge gone">{e(label)}</span>'
        elif rev.mrn == view.mrn:
            what = (f'<span class="badge corr">merged</span> moved to '
                    f'<a href="{e(patient_href(rev.new_mrn or ""))}">{e(rev.new_mrn)}</a>')
        else:
            what = (f'<span class="badge gone">merged, not kept</span> from {e(rev.mrn)}: '
                    "this patient had its own result at this time")
        if rev.action != MERGED and rev.mrn != view.mrn:
            what += f" (under {e(rev.mrn)}, before the merge)"
        rows.append(
            f'<tr class="revision" data-time="{rev.time}" data-action="{e(rev.action)}">'
            f"<td>{e(fmt_sample(rev.time))}</td>"
            f'<td class="n"><del>{e(fmt_value(rev.value, rev.comparator))}</del></td>'
            f"<td>{e(STATUS_LABEL.get(rev.status, rev.status))}</td><td></td>"
            f'<td>{what} <span class="small">{e(fmt_wall(rev.changed_at))}</span></td></tr>')
    return "".join(rows)


def patient_page(view: PatientView) -> str:
    ref = view.results[-1].time if view.results else None
    if view.birth is not None:
        age = (f", age {age_years(view.birth, ref):.0f} at the latest result"
               if ref is not None else "")
        dob = f"{fmt_date(view.birth)}{age}"
    else:
        dob = "—"
    sex = {"F": "female", "M": "male"}.get(view.sex or "", "—")
    status = ("admitted" if view.admitted else "not admitted") if view.name is not None \
        else "never admitted in the feed"
    demo = (f'<div class="cards">'
            f'<div class="card"><div class="k">Name</div><div class="v" id="name">'
            f'{e(view.name or "unknown")}</div></div>'
            f'<div class="card"><div class="k">Date of birth</div><div class="v">{e(dob)}'
            f"</div></div>"
            f'<div class="card"><div class="k">Sex</div><div class="v">{e(sex)}</div></div>'
            f'<div class="card"><div class="k">Status</div><div class="v">{e(status)}</div>'
            "</div>"
            f'<div class="card"><div class="k">Results</div><div class="v">'
            f"{len(view.results)}</div></div></div>")
    pages = chart_pages(view)
    svg = chart_svg([(r.time, r.value) for r in view.results], pages,
                    [(s.start, s.end) for s in view.stays], [r.source for r in view.results])
    legend = ('<div class="legend">'
              '<span><span class="sw" style="background:#1f4e79"></span>result (feed)</span>'
              '<span><span class="sw" style="border:1.5px solid #1f4e79;background:#fff">'
              "</span>result (history file)</span>"
              '<span><span class="sw" style="border:2.5px solid #c0392b;border-radius:7px">'
              "</span>result that was paged</span>"
              '<span><span class="sw" style="border-top:3px solid #e67e22;height:0"></span>'
              "baseline used (solid over its window)</span>"
              '<span><span class="sw" style="background:#dcebfa"></span>admitted</span>'
              '<span><span class="sw" style="background:#fde9a9"></span>RV1 0–7 d</span>'
              '<span><span class="sw" style="background:#cdeed9"></span>RV2 8–365 d</span>'
              "</div>")
    windows = {p.time: p.window for p in pages}
    explains = "".join(_explain(a, view, windows.get(a.result_time))
                       for a in reversed(view.pages)) or \
        '<p class="muted">No page for this patient.</p>'
    paged = {a.result_time for a in view.pages}
    rows = _result_rows(view, paged)
    truncated = ('<p class="muted">Only the latest results are shown.</p>'
                 if view.truncated else "")
    stays = "".join(f"<li>{e(fmt_sample(s.start))} – "
                    f"{e(fmt_sample(s.end) if s.end is not None else 'still admitted')}</li>"
                    for s in view.stays) or "<li class=\"muted\">none in the feed</li>"
    return layout(f"Patient {view.mrn}", (
        f"<h1>Patient <span id=\"mrn\">{e(view.mrn)}</span></h1>{_merge_notes(view)}{demo}"
        f"<h2>Pages</h2>{explains}"
        f'<h2>Creatinine</h2><div class="chart">{svg}{legend}</div>{truncated}'
        f"<h2>Admissions</h2><ul>{stays}</ul>"
        '<h2>Results</h2><table id="results" class="narrow"><thead><tr><th>Sample time</th>'
        '<th class="n">µmol/L</th><th>Status</th><th>Source</th><th>Note</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
        '<p class="small muted">Struck through: values the patient\'s results no longer hold '
        "(replaced by a correction, withdrawn by the lab, or not kept in a merge), kept for "
        "audit. The chart and the detector use the current values only.</p>"), "")


# --- the service ----------------------------------------------------------------------------

def _card(key: str, value: str, cls: str = "") -> str:
    badge = f'<span class="badge {cls}">{value}</span>' if cls else value
    return f'<div class="card"><div class="k">{e(key)}</div><div class="v">{badge}</div></div>'


def service_page(view: ServiceView, pm: ProcessMetrics) -> str:
    now = view.now
    if pm.connected is None:
        conn, conn_cls = "unknown", "warn"
    elif pm.connected >= 1:
        conn, conn_cls = "connected", "ok"
    else:
        conn, conn_cls = "disconnected", "bad"
    rate = view.per_minute[-1] if view.per_minute else 0
    oldest_age = (now - view.oldest_pending) if view.oldest_pending is not None else None
    pending_cls = "ok" if not view.pending else ("bad" if (oldest_age or 0) > 60 else "warn")
    mismatch = pm.provenance_mismatch
    prov_cls = "bad" if mismatch else ("ok" if mismatch is not None else "warn")
    prov = "mismatch at start" if mismatch else ("matches" if mismatch is not None else "unknown")
    cards = "".join((
        _card("MLLP connection", e(conn), conn_cls),
        _card("Messages, last minute", f"{rate}"),
        _card("Last message", e(fmt_ago(view.last_received, now))),
        _card("Outbox pending", f"{view.pending}", pending_cls),
        _card("Oldest pending", e(fmt_ago(view.oldest_pending, now)
                                  if view.oldest_pending is not None else "none")),
        _card("Last page accepted", e(fmt_ago(view.last_delivered, now))),
        _card("State provenance", e(prov), prov_cls),
    ))
    peak = max(view.per_minute + [1])
    n = len(view.per_minute)
    bars = "".join(
        f'<div title="{c} messages" style="height:{max(1, round(56 * c / peak))}px"></div>'
        for c in view.per_minute)
    labels = "".join(f"<span style=\"width:34px\">−{n - i}′</span>" for i in range(n))
    per_min = (f'<div class="bars" id="rate">{bars}</div><div style="display:flex;gap:6px">'
               f"{labels}</div><p class=\"small muted\">Messages received per minute over the "
               f"last {n} minutes (from the journal): {', '.join(map(str, view.per_minute))}. "
               f"{view.messages} messages journaled in all.</p>")
    m = view.meta
    meta_keys = (("environment", "environment"), ("history file", "history_path"),
                 ("history sha256", "history_sha256"), ("history imported", "history_imported_at"),
                 ("detector", "detector"), ("detector version", "detector_version"),
                 ("state created", "created_at"))

    def meta_value(key: str) -> str:
        v = m.get(key)
        if v is None:
            return '<span class="muted">—</span>'
        if key.endswith("_at") and v.isdigit():
            return e(fmt_wall(float(v)))
        return f"<code>{e(v)}</code>"

    prov_rows = "".join(f"<dt>{e(label)}</dt><dd>{meta_value(key)}</dd>"
                        for label, key in meta_keys)
    extra = sorted(k for k in m if k not in {key for _, key in meta_keys})
    prov_rows += "".join(f"<dt>{e(k)}</dt><dd><code>{e(m[k])}</code></dd>" for k in extra)

    def counter_list(d: dict[str, float]) -> str:
        return ", ".join(f"{e(k)} {v:.0f}" for k, v in sorted(d.items())) or "none"

    process = (f"<dl class=\"kv\"><dt>received since start</dt><dd>{counter_list(pm.received)}"
               f"</dd><dt>page attempts since start</dt><dd>{counter_list(pm.pages)}</dd>"
               f"<dt>dead letters since start</dt><dd>{counter_list(pm.dead_letters)}</dd>"
               f"<dt>outbox, all time</dt><dd>"
               f"{', '.join(f'{e(k)} {v}' for k, v in sorted(view.by_status.items())) or 'empty'}"
               "</dd></dl>")
    dead_rows = "".join(
        f'<tr class="dead"><td class="small">{e(fmt_wall(d.received_at))}</td>'
        f"<td>{e(d.kind)}</td><td class=\"err\">{e(d.reason or '')}</td>"
        f"<td><code>{e(d.preview)}</code></td></tr>" for d in view.dead_letters)
    dead = (f'<table id="dead-letters"><thead><tr><th>Received</th><th>Kind</th><th>Reason</th>'
            f"<th>Message (start)</th></tr></thead><tbody>{dead_rows}</tbody></table>"
            if dead_rows else '<p class="muted">None.</p>')
    err_rows = "".join(
        f"<tr><td class=\"small\">{e(fmt_wall(o.created_at))}</td>"
        f'<td><a href="{e(patient_href(o.mrn))}">{e(o.mrn)}</a></td><td>{e(o.body)}</td>'
        f"<td>{e(DELIVERY_LABEL.get(o.status, o.status))}</td><td class=\"n\">{o.attempts}</td>"
        f'<td class="err">{e(o.last_error)}</td></tr>' for o in view.outbox_errors)
    errs = (f'<table id="outbox-errors"><thead><tr><th>Decided</th><th>MRN</th><th>Page</th>'
            f'<th>Status</th><th class="n">Attempts</th><th>Pager\'s answer</th></tr></thead>'
            f"<tbody>{err_rows}</tbody></table>" if err_rows else '<p class="muted">None.</p>')
    return layout("Service", (
        f"<h1>Service</h1><p class=\"muted small\">As of {e(fmt_wall(now))}.</p>"
        f'<div class="cards">{cards}</div>'
        f"<h2>Feed</h2>{per_min}"
        f"<h2>State provenance</h2><dl class=\"kv\" id=\"provenance\">{prov_rows}</dl>"
        f"<h2>This process</h2>{process}"
        f"<h2>Dead letters</h2><p class=\"small muted\">The latest (at most "
        f"{DEAD_LETTERS_SHOWN}) among the last {view.dead_letters_window:,} messages, with the "
        f"reason each was set aside.</p>{dead}"
        f"<h2>Pager errors</h2><p class=\"small muted\">Latest pages whose delivery failed at "
        f"least once, with the pager's last answer.</p>{errs}"), "service")
