"""The console's pages as HTML strings: pure functions of the data in `queries` (no I/O).

Plain Python f-strings with `html.escape` on every value that came from the state, rather
than a templating library: none is installed, the pages are few and small, and adding a
dependency (and its autoescape configuration) to a process that handles patient data buys
little. The rule is mechanical: every interpolated value passes through `e()` (or is a number
formatted here); markup is only ever written literally in this module. The chart is inline
SVG built the same way; CSS is inline (with a narrow-screen layout: tables become stacked
cards under 720 px); there is no JavaScript, so the strict CSP holds. Names from the state are
isolated (`<bdi>`) and cut to NAME_MAX characters.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from ..detect.nhs import ABSOLUTE_LIMIT, RISE_LIMIT
from ..episodes import EPISODE_DAYS
from ..timeutil import DAY, HOUR, age_years, format_csv_time
from .explain import (ABSOLUTE, OVERDUE_SECONDS, RATIO, RISE, PageReason, page_reason,
                      since_page)
from .explain import baseline_window as baseline_window  # the chart's, re-exported
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


def fmt_wall_html(t: float | None) -> str:
    """fmt_wall, breakable between the date and the time only."""
    day, _, clock = fmt_wall(t).partition(" ")
    return f'<span class="nw">{e(day)}</span> <span class="nw">{e(clock)}</span>'


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


NAME_MAX = 40       # characters of a name shown; the full name is in the title


def fmt_name(name: str | None, limit: int = NAME_MAX) -> str:
    """A patient's name as HTML: isolated from the text around it (<bdi>, so a right-to-left
    name cannot reorder an MRN or a value beside it), cut to `limit` characters with an
    ellipsis, the full name in the title (a tooltip)."""
    if not name:
        return '<span class="muted">—</span>'
    shown = name if len(name) <= limit else name[:limit - 1].rstrip() + "…"
    title = f' title="{e(name)}"' if shown != name else ""
    return f'<bdi class="name"{title}>{e(shown)}</bdi>'


def fmt_error(text: str | None) -> str:
    """The pager's answer (or any text from outside), isolated and escaped."""
    return f"<bdi>{e(text)}</bdi>" if text else ""


DELIVERY_LABEL = {"delivered": "delivered", "retrying": "retrying", "pending": "pending",
                  "dead": "dead-lettered", "suppressed": "suppressed (replay)"}


def delivery_text(a: Alert, now: float) -> str:
    """What became of the page, in words: "not delivered (…)" when it never reached the pager."""
    if a.status == "dead":
        return "not delivered: the pager refused it (dead-lettered)"
    if a.not_delivered(now):
        return (f"not delivered: still pending {fmt_ago(a.created_at, now).removesuffix(' ago')}"
                f" after it was decided, {a.attempts} attempt(s)")
    return DELIVERY_LABEL.get(a.delivery, a.delivery)


def delivery_badge(a: Alert, now: float | None = None) -> str:
    """The delivery status as a badge; a page that never reached the pager reads "not
    delivered" (red), with the pager's answer."""
    now = time.time() if now is None else now
    if a.not_delivered(now):
        why = "dead-lettered" if a.status == "dead" else \
            f"pending {fmt_ago(a.created_at, now).removesuffix(' ago')}"
        badge = (f'<span class="badge d-undelivered" title="{e(delivery_text(a, now))}">'
                 f"not delivered</span> <span class=\"small\">{e(why)}</span>")
    else:
        label = DELIVERY_LABEL.get(a.delivery, a.delivery)
        badge = f'<span class="badge d-{e(a.delivery)}">{e(label)}</span>'
    if a.last_error and a.delivery in ("retrying", "dead"):
        badge += f'<div class="err">pager: {fmt_error(a.last_error)}</div>'
    return badge


def fmt_since(a: Alert, digits: int = 0) -> str:
    """The latest result since the page and its trend against the paged value, as HTML."""
    s = since_page(a.value, a.since_count, a.latest_time, a.latest_value)
    if not s.count or s.latest_value is None:
        return '<span class="muted">none yet</span>'
    arrow = TREND_ARROW.get(s.trend or "", "")
    change = (f" ({s.change:+.{digits}f})" if s.change is not None else "")
    return (f'<span class="since trend-{e(s.trend or "unknown")}" data-trend="{e(s.trend)}">'
            f"{arrow} {s.latest_value:.{digits}f}{change}</span>"
            f'<span class="small muted when"> {e(fmt_sample(s.latest_time))}</span>')


TREND_ARROW = {"rising": "↑", "falling": "↓", "steady": "→"}


def patient_href(mrn: str) -> str:
    return "/patients/" + quote(mrn, safe="")


# --- layout ---------------------------------------------------------------------------------

CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b2733;
background:#f5f7fa}
header{background:#17324d;color:#fff;padding:10px 24px;display:flex;flex-wrap:wrap;
gap:6px 28px;align-items:baseline}
header .brand{font-weight:700;font-size:16px;letter-spacing:.02em}
header a{color:#cfe0f2;text-decoration:none;padding:2px 0}
header a.on{color:#fff;border-bottom:2px solid #fff}
header .refresh{margin-left:auto;font-size:12px;color:#cfe0f2}
header .refresh a{text-decoration:underline}
main{padding:16px 24px 40px;max-width:1280px}
h1{font-size:20px;margin:6px 0 12px;overflow-wrap:anywhere}h2{font-size:16px;margin:22px 0 8px}
a{color:#1f5fa8}
table{border-collapse:collapse;background:#fff;width:100%;box-shadow:0 1px 2px #0001}
th,td{padding:5px 8px;border-bottom:1px solid #e3e8ee;text-align:left;vertical-align:top}
th{background:#eef2f6;font-weight:600;font-size:12px;color:#44546a;white-space:nowrap}
td.nw,span.nw{white-space:nowrap}
table.narrow{width:auto;min-width:520px}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.hl td{background:#fff4f2}
tr.undelivered td{background:#fff0ee}
tr.undelivered td:first-child{box-shadow:inset 4px 0 #c0392b}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600;
white-space:nowrap}
.s0{background:#e8ebef;color:#445}.s1{background:#fff1c2;color:#7a5200}
.s2{background:#ffd9b3;color:#8a3b00}.s3{background:#ffc9c4;color:#8e1208}
.d-delivered{background:#d6f5de;color:#14632d}.d-retrying{background:#fff1c2;color:#7a5200}
.d-pending{background:#e8ebef;color:#445}.d-dead{background:#ffc9c4;color:#8e1208}
.d-undelivered{background:#b3261e;color:#fff}
.d-suppressed{background:#eef0f3;color:#667;font-style:italic}
.ok{background:#d6f5de;color:#14632d}.bad{background:#ffc9c4;color:#8e1208}
.warn{background:#fff1c2;color:#7a5200}
.alarm{background:#fdecea;border:1px solid #e6a19a;border-left:6px solid #b3261e;color:#7d1008;
padding:8px 12px;margin:8px 0 12px;font-weight:600;border-radius:3px}
.alarm a{color:#7d1008}
.err{color:#8e1208;font-size:12px;max-width:380px;overflow-wrap:anywhere}
.muted{color:#667788}.small{font-size:12px}
bdi.name{display:inline-block;max-width:22em;overflow:hidden;text-overflow:ellipsis;
white-space:nowrap;vertical-align:bottom;unicode-bidi:isolate}
.trend-rising{color:#8e1208;font-weight:600}.trend-falling{color:#14632d;font-weight:600}
.since{white-space:nowrap}
#alerts .when,#alerts .version,#alerts .attempts{display:block;white-space:nowrap}
#alerts td.mrn{overflow-wrap:anywhere;min-width:6em;max-width:11em}
#alerts bdi.name{max-width:12em}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0 4px}
.card{background:#fff;padding:10px 14px;box-shadow:0 1px 2px #0001;min-width:170px;
border-radius:4px;max-width:100%}
.card .k{font-size:12px;color:#667788}
.card .v{font-size:18px;font-weight:600;margin-top:2px;overflow-wrap:anywhere}
.explain{background:#fff;border-left:4px solid #c0392b;padding:8px 12px;margin:8px 0;
box-shadow:0 1px 2px #0001;overflow-wrap:anywhere}
.explain.undelivered{border-left:6px solid #b3261e;background:#fff6f5}
.explain .rule{display:block;margin:4px 0}
.explain .since-page{display:block;margin-top:4px}
.chart{background:#fff;box-shadow:0 1px 2px #0001;padding:8px;border-radius:4px}
.chart svg{width:100%;height:auto;display:block}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;font-size:12px;color:#44546a;margin:6px 4px 0}
.sw{display:inline-block;width:14px;height:10px;margin-right:5px;vertical-align:-1px}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;background:#fff;
padding:10px 14px;margin:0;box-shadow:0 1px 2px #0001}
dl.kv dt{color:#667788}dl.kv dd{margin:0;overflow-wrap:anywhere;min-width:0}
code{font-size:12px;background:#eef2f6;padding:0 4px;border-radius:3px;overflow-wrap:anywhere}
.bars{display:flex;gap:6px;align-items:flex-end;height:60px}
.bars div{background:#4a7fb5;width:34px;min-height:1px}
.bars span{display:block;font-size:11px;color:#667788;text-align:center}
nav.pager{margin:10px 0}
.merge{background:#fff;border-left:4px solid #1f5fa8;padding:8px 12px;margin:8px 0;
box-shadow:0 1px 2px #0001;overflow-wrap:anywhere}
tr.revision td{color:#667788}tr.revision del{color:#8e1208}
.prelim{background:#fff1c2;color:#7a5200}.corr{background:#e3ecf7;color:#1f4e79}
.gone{background:#ffc9c4;color:#8e1208}
.scroll{overflow-x:auto;max-width:100%}
@media (max-width:720px){
header{padding:8px 12px;gap:4px 16px}
main{padding:10px 10px 32px}
table.narrow{min-width:0;width:100%}
.chart{overflow-x:auto}.chart svg{min-width:640px}
.card{min-width:0;flex:1 1 140px}
dl.kv{grid-template-columns:1fr;gap:0 0}dl.kv dd{margin-bottom:6px}
.err{max-width:none}
bdi.name{max-width:14em}
table.stack,table.stack tbody,table.stack tr,table.stack td{display:block;width:100%}
table.stack thead{display:none}
table.stack{background:none;box-shadow:none}
table.stack tr{background:#fff;margin:0 0 10px;box-shadow:0 1px 2px #0002;border-radius:4px;
padding:4px 0}
table.stack td{border:0;padding:2px 10px 2px 122px;text-align:left;
position:relative;min-height:1.7em;overflow-wrap:anywhere}
table.stack td::before{content:attr(data-label);position:absolute;left:10px;width:104px;
color:#667788;font-size:12px;font-weight:400;font-style:normal;line-height:1.2;padding-top:3px}
table.stack td.nw{white-space:normal}
table.stack td.opt{display:none}
#alerts .when,#alerts .version,#alerts .attempts{display:inline}
#alerts td.mrn{max-width:none;min-width:0}
}
"""


@dataclass(frozen=True, slots=True)
class Refresh:
    """How a page reloads itself: every `seconds` (0: never), unless the user `paused` it
    (`?refresh=0`); `here` is the page's URL without `refresh=`."""

    seconds: int = 0
    here: str = "/"
    paused: bool = False

    def link(self, **query: object) -> str:
        extra = "&".join(f"{k}={v}" for k, v in query.items())
        if not extra:
            return self.here
        return self.here + ("&" if "?" in self.here else "?") + extra


NO_REFRESH = Refresh()


def layout(title: str, body: str, active: str = "", refresh: Refresh = NO_REFRESH) -> str:
    """A page. `refresh.seconds`: a meta refresh, which reloads the same URL (the browser
    keeps the scroll position on a reload); the header then offers to pause it, as WCAG 2.2.1
    asks of anything that changes on its own, and, paused, to resume it."""
    def link(href: str, label: str, key: str) -> str:
        on = ' class="on"' if key == active else ""
        return f'<a href="{href}"{on}>{label}</a>'

    meta = control = ""
    if refresh.paused:
        control = (f'<span class="refresh" id="refresh">Automatic updates paused · '
                   f'<a href="{e(refresh.link())}">resume</a></span>')
    elif refresh.seconds > 0:
        meta = f'<meta http-equiv="refresh" content="{int(refresh.seconds)}">'
        control = (f'<span class="refresh" id="refresh">Updates every {int(refresh.seconds)} s'
                   f' · <a href="{e(refresh.link(refresh=0))}">pause</a></span>')
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="referrer" content="no-referrer">{meta}'
        f"<title>{e(title)} · aki-alert</title><style>{CSS}</style></head><body>"
        f'<header><span class="brand">aki-alert console</span>'
        f'{link("/", "Alerts", "alerts")}{link("/service", "Service", "service")}{control}'
        f"</header><main>{body}</main></body></html>\n"
    )


def error_page(status: int, title: str, message: str) -> str:
    return layout(title, f"<h1>{status} · {e(title)}</h1><p>{e(message)}</p>"
                  '<p><a href="/">Back to the alerts</a></p>')


def undelivered_alarm(count: int, where: str = "in the outbox") -> str:
    """The red headline of pages that never reached the pager."""
    if not count:
        return ""
    pages = "page" if count == 1 else "pages"
    return (f'<div class="alarm" id="undelivered" role="alert">{count} {pages} {e(where)} '
            f"<strong>not delivered</strong>: the pager refused {'it' if count == 1 else 'them'}"
            f" or has not accepted {'it' if count == 1 else 'them'} "
            f"{OVERDUE_SECONDS:.0f} s after the decision. The clinician was not paged; see "
            '<a href="/service#not-delivered">the service page</a>.</div>')


# --- alerts ---------------------------------------------------------------------------------

def alerts_page(data: AlertList, now: float, before: int | None = None,
                refresh: Refresh = NO_REFRESH, limit: int | None = None) -> str:
    counts = " ".join(
        f'<span class="badge d-{e(k)}">{e(DELIVERY_LABEL.get(k, k))}: {n}</span>'
        for k, n in sorted(data.by_status.items()))
    rows = []
    for a in data.alerts:
        bad = a.not_delivered(now)
        rows.append(
            f'<tr class="alert{" undelivered" if bad else ""}" data-mrn="{e(a.mrn)}" '
            f'data-time="{a.result_time}" data-status="{e(a.delivery)}" '
            f'data-delivered="{"no" if bad else "yes" if a.status == "delivered" else ""}">'
            f'<td class="time nw" data-label="Sample time">{e(fmt_sample(a.result_time))}</td>'
            f'<td class="mrn" data-label="MRN"><a href="{e(patient_href(a.mrn))}">{e(a.mrn)}</a>'
            "</td>"
            f'<td data-label="Name">{fmt_name(a.name)}</td>'
            f'<td data-label="Stage">{stage_badge(a.stage)}</td>'
            f'<td class="n" data-label="Creat. µmol/L">{fmt_num(a.value)}</td>'
            f'<td class="n" data-label="Baseline">{fmt_num(a.baseline)}</td>'
            f'<td class="n" data-label="Ratio">{fmt_num(a.ratio, 2)}'
            f'{"×" if a.ratio is not None else ""}</td>'
            f'<td class="since-cell" data-label="Latest since">{fmt_since(a)}</td>'
            f'<td class="opt" data-label="Detector">{e(a.detector or "—")} '
            f'<span class="muted small version">{e(a.version or "")}</span></td>'
            f'<td class="n nw opt" data-label="Score">{e(fmt_score(a))}</td>'
            f'<td class="delivery" data-label="Delivery">{delivery_badge(a, now)}'
            f'<span class="small muted attempts"> {a.attempts} attempt'
            f'{"" if a.attempts == 1 else "s"}</span></td>'
            f'<td class="small muted" data-label="Decided">{fmt_wall_html(a.created_at)}</td>'
            "</tr>")
    if not rows:
        table = '<p class="muted">No pages yet.</p>'
    else:
        table = (
            '<table id="alerts" class="stack"><thead><tr><th>Sample time</th><th>MRN</th>'
            '<th>Name</th><th>Stage</th><th class="n">Creat. µmol/L</th>'
            '<th class="n">Baseline</th><th class="n">Ratio</th>'
            '<th title="the latest result sampled after the paged one, and its change">'
            'Latest since</th><th>Detector</th><th class="n">Score</th>'
            '<th>Delivery</th><th>Decided</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")
    nav = []
    if before is not None:
        nav.append('<a href="/">Newest</a>')
    if data.older_than is not None:
        more = f"&amp;limit={int(limit)}" if limit is not None else ""
        nav.append(f'<a href="/?before={data.older_than}{more}">Older pages →</a>')
    where = "older pages" if before is not None else "the latest pages"
    return layout("Alerts", (
        f"<h1>Alerts</h1>{undelivered_alarm(data.undelivered)}"
        f"<p class=\"muted\">Showing {len(data.alerts)} of {where}, newest "
        f"first. Times are the result's sample time (hospital clock); “latest since” is the "
        f"patient's latest result after the paged one (↑ / ↓: more than 10% above / below "
        f"it).</p>"
        f'<div class="cards"><div class="card"><div class="k">Outbox</div>'
        f'<div class="v small">{counts or "empty"}</div></div></div>'
        f"{table}<nav class=\"pager\">{' · '.join(nav)}</nav>"), "alerts", refresh)


# --- the chart ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ChartPage:
    """A page drawn on the chart: its triggering result and the baseline it was compared with."""

    time: int
    value: float
    baseline: float | None
    window: str | None          # "RV1" (0–7 days before) or "RV2" (8–365 days), None unknown
    stage: int | None
    rule: str | None = None     # the NHS rule that gave the stage (explain.RATIO, ...)
    rise_from: tuple[int, float] | None = None   # RISE: the result it rose from


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
    `threshold`); when a page's stage came from the absolute rule, the 354 µmol/L line (class
    `absolute`), and from the 48-hour rise, an arrow from the result it rose from (class
    `rise`). Every element carries its data as `data-*` attributes.
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
    # The absolute rule's level, when a page's stage 3 came from it.
    if any(p.rule == ABSOLUTE for p in pages) and ABSOLUTE_LIMIT <= v_hi:
        ay = _f(y(ABSOLUTE_LIMIT))
        out.append(f'<line class="absolute" data-value="{ABSOLUTE_LIMIT:g}" x1="{X0}" x2="{X1}" '
                   f'y1="{ay}" y2="{ay}" stroke="#8e1208" stroke-width="1.2" '
                   'stroke-dasharray="8 3"><title>354 µmol/L: above it, a ratio of 1.5 or more '
                   "is stage 3</title></line>")
        labels.append((y(ABSOLUTE_LIMIT), "> 354: stage 3", "#8e1208", "700"))
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
    # The 48-hour rises that gave a stage 1: from the result risen from to the paged one.
    for p in pages:
        if p.rule == RISE and p.rise_from is not None:
            t0, v0 = p.rise_from
            out.append(f'<g class="rise" data-time="{p.time}" data-from="{t0}" '
                       f'data-rise="{p.value - v0:.6g}"><line x1="{_f(x(clip(t0)))}" '
                       f'y1="{_f(y(v0))}" x2="{_f(x(p.time))}" y2="{_f(y(p.value))}" '
                       'stroke="#c0392b" stroke-width="2" stroke-dasharray="4 2"/>'
                       f'<title>rise of {p.value - v0:.0f} µmol/L within 48 hours</title></g>')
    # Triggering results, on top.
    for p in pages:
        cx, cy = _f(x(p.time)), _f(y(p.value))
        label = f"page · stage {p.stage}" if p.stage else "page"
        if p.rule == ABSOLUTE:
            label += " (> 354)"
        elif p.rule == RISE:
            label += " (48-h rise)"
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


RATIO_AT = {1: 1.5, 2: 2.0, 3: 3.0}


def _rule_text(r: PageReason, value_html: str) -> str:
    """The sentence that names the NHS rule behind the stage, from the page's reason."""
    base = ""
    if r.baseline is not None and r.ratio is not None:
        base = (f"{r.ratio:.2f}× the baseline {r.baseline:.0f} µmol/L "
                f"({e(WINDOW_TEXT.get(r.window or '', 'NHS reference value'))})")
    rv = f"C1/{r.window}" if r.window else "C1/RV"
    badge = stage_badge(r.stage)
    if r.rule == RATIO:
        return (f'<span class="rule" data-rule="ratio">{value_html} is {base} → {badge}, by '
                f"the ratio rule ({rv} ≥ {RATIO_AT[r.stage or 1]:g}).</span>")
    if r.rule == ABSOLUTE:
        changed = ("" if r.value is None or r.value > ABSOLUTE_LIMIT else
                   " (it was above 354 µmol/L when paged; the result has changed since)")
        return (f'<span class="rule" data-rule="absolute">{value_html} is above '
                f"{ABSOLUTE_LIMIT:.0f} µmol/L{changed}, with a ratio of {base} → {badge}, by "
                f"the absolute rule (C1 &gt; {ABSOLUTE_LIMIT:.0f} µmol/L with {rv} ≥ 1.5). The "
                f"ratio alone would be stage {r.ratio_stage}.</span>")
    if r.rule == RISE:
        if r.rise_from is not None and r.rise is not None:
            t0, v0 = r.rise_from
            rise = (f"a rise of {r.rise:.0f} µmol/L over the result of "
                    f"{e(fmt_sample(t0))} ({v0:.0f} µmol/L), more than {RISE_LIMIT:.0f} "
                    "µmol/L within 48 hours")
        else:
            rise = (f"a rise of more than {RISE_LIMIT:.0f} µmol/L within 48 hours (the earlier "
                    "result is no longer among the patient's results)")
        ratio = f" The ratio, {base}, is under 1.5." if base else \
            " There is no baseline for a ratio."
        return (f'<span class="rule" data-rule="rise">{value_html}: {rise} → {badge}, by the '
                f"48-hour rise rule.{ratio}</span>")
    if not r.stage:
        ratio = f" is {base}" if base else ""
        return (f'<span class="rule" data-rule="none">{value_html}{ratio} → {badge}: no NHS '
                "rule fired; paged on the detector's score.</span>")
    ratio = f" is {base}" if base else ""
    return (f'<span class="rule" data-rule="unknown">{value_html}{ratio} → {badge} (as the '
            "detector recorded it).</span>")


def _since_text(a: Alert, view: PatientView) -> str:
    s = since_page(a.value, a.since_count, a.latest_time, a.latest_value)
    if not s.count or s.latest_time is None or s.latest_value is None:
        return '<span class="since-page">No result since the page.</span>'
    latest = next((r for r in reversed(view.results) if r.time == s.latest_time), None)
    status = f" ({status_badge(latest.status)})" if latest and latest.status != "F" else ""
    change = ""
    if s.change is not None and a.value:
        word = "higher" if s.change > 0 else "lower"
        change = (f", {abs(s.change):.0f} µmol/L {word} than the paged result "
                  f"({s.latest_value / a.value:.2f}×)" if s.change else ", as the paged result")
    trend = (f' <span class="trend-{e(s.trend)}">{TREND_ARROW.get(s.trend or "", "")} '
             f"{e(s.trend)}</span>" if s.trend else "")
    return (f'<span class="since-page" data-count="{s.count}" data-trend="{e(s.trend)}">'
            f"Since the page: {s.count} result{'s' if s.count != 1 else ''}; the latest, "
            f"{s.latest_value:.0f} µmol/L{status} on {e(fmt_sample(s.latest_time))}"
            f"{change}.{trend}</span>")


def _explain(a: Alert, view: PatientView, reason: PageReason, now: float) -> str:
    when = e(fmt_sample(a.result_time))
    bad = a.not_delivered(now)
    if bad:
        head = (f'<strong class="headline">Not delivered: the page for the result of {when} '
                "never reached the pager</strong>")
        if a.status == "dead":
            head += f" (it refused the page; dead-lettered after {a.attempts} attempt(s))"
        else:
            head += (f" (still pending {e(fmt_ago(a.created_at, now).removesuffix(' ago'))} "
                     f"after the decision, {a.attempts} attempt(s))")
        head += ". The clinician was not paged for it."
        if a.last_error:
            head += f' <span class="err">The pager answered: {fmt_error(a.last_error)}</span>'
    elif a.status == "suppressed":
        head = (f"<strong class=\"headline\">Decided during a replay, not sent</strong>, for "
                f"the result of {when}.")
    else:
        head = f'<strong class="headline">Paged for the result of {when}</strong>:'
    if a.value is not None:
        value_html = f"creatinine {a.value:.0f} µmol/L"
    else:
        gone = next((r for r in reversed(view.revisions)
                     if r.time == a.result_time and r.action == REMOVED), None)
        if gone is not None:
            label = WITHDRAWN_LABEL.get(gone.withdrawn or "", "withdrawn")
            value_html = (f"creatinine {gone.value:.0f} µmol/L, since "
                          f'<span class="badge gone">{e(label)}</span> by the lab')
        else:
            value_html = "the result (no longer held)"
    parts = [head, " ", _rule_text(reason, value_html), _since_text(a, view),
             f"Detector <code>{e(a.detector or '?')}</code> version "
             f"<code>{e(a.version or '?')}</code>: score {e(fmt_score(a))}. ",
             f"Delivery: {delivery_badge(a, now)} after {a.attempts} attempt(s)"]
    if a.delivered_at is not None:
        parts.append(f", accepted {e(fmt_wall(a.delivered_at))}")
    parts.append(".")
    cls = "explain undelivered" if bad else "explain"
    return (f'<div class="{cls}" data-time="{a.result_time}" data-rule="{e(reason.rule)}" '
            f'data-delivered="{"no" if bad else "yes" if a.status == "delivered" else ""}">'
            f'{"".join(parts)}</div>')


def page_reasons(view: PatientView) -> list[PageReason]:
    """The reason of each of the patient's pages (view.pages' order)."""
    times = [r.time for r in view.results]
    values = [r.value for r in view.results]
    out = []
    for a in view.pages:
        value = a.value
        if value is None:
            gone = next((r for r in reversed(view.revisions)
                         if r.time == a.result_time and r.action == REMOVED), None)
            value = gone.value if gone is not None else None
        out.append(page_reason(a.stage, a.ratio, a.baseline, value, a.result_time, times,
                               values))
    return out


def chart_pages(view: PatientView, reasons: Sequence[PageReason] | None = None
                ) -> list[ChartPage]:
    reasons = page_reasons(view) if reasons is None else reasons
    by_time = {r.time: r.value for r in view.results}
    out = []
    for a, r in zip(view.pages, reasons, strict=True):
        value = a.value if a.value is not None else by_time.get(a.result_time)
        if value is None:
            continue
        out.append(ChartPage(a.result_time, value, a.baseline, r.window, a.stage, r.rule,
                             r.rise_from))
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


def episode_text(start: int | None) -> str:
    """The patient's AKI episode as the service holds it (episodes.py): from the result that
    opened it (or re-paged it) for EPISODE_DAYS, during which only a markedly worse result
    pages again."""
    if start is None:
        return "none"
    return f"from {fmt_sample(start)} to {fmt_sample(start + EPISODE_DAYS * DAY)}"


def patient_page(view: PatientView, now: float | None = None,
                 refresh: Refresh = NO_REFRESH) -> str:
    now = time.time() if now is None else now
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
            f'{fmt_name(view.name) if view.name else "unknown"}</div></div>'
            f'<div class="card"><div class="k">Date of birth</div><div class="v">{e(dob)}'
            f"</div></div>"
            f'<div class="card"><div class="k">Sex</div><div class="v">{e(sex)}</div></div>'
            f'<div class="card"><div class="k">Status</div><div class="v">{e(status)}</div>'
            "</div>"
            f'<div class="card"><div class="k">Results</div><div class="v">'
            f"{len(view.results)}</div></div>"
            f'<div class="card"><div class="k">Episode</div><div class="v" id="episode">'
            f"{e(episode_text(view.episode_start))}</div></div></div>")
    reasons = page_reasons(view)
    pages = chart_pages(view, reasons)
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
    explains = "".join(_explain(a, view, r, now)
                       for a, r in reversed(list(zip(view.pages, reasons, strict=True)))) or \
        '<p class="muted">No page for this patient.</p>'
    undelivered = sum(a.not_delivered(now) for a in view.pages)
    paged = {a.result_time for a in view.pages}
    rows = _result_rows(view, paged)
    truncated = ('<p class="muted">Only the latest results are shown.</p>'
                 if view.truncated else "")
    stays = "".join(f"<li>{e(fmt_sample(s.start))} – "
                    f"{e(fmt_sample(s.end) if s.end is not None else 'still admitted')}</li>"
                    for s in view.stays) or "<li class=\"muted\">none in the feed</li>"
    return layout(f"Patient {view.mrn}", (
        f"<h1>Patient <span id=\"mrn\">{e(view.mrn)}</span></h1>"
        f"{undelivered_alarm(undelivered, 'for this patient')}{_merge_notes(view)}{demo}"
        f"<h2>Pages</h2>{explains}"
        f'<h2>Creatinine</h2><div class="chart">{svg}{legend}</div>{truncated}'
        f"<h2>Admissions</h2><ul>{stays}</ul>"
        '<h2>Results</h2><div class="scroll"><table id="results" class="narrow"><thead><tr>'
        "<th>Sample time</th>"
        '<th class="n">µmol/L</th><th>Status</th><th>Source</th><th>Note</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
        '<p class="small muted">Struck through: values the patient\'s results no longer hold '
        "(replaced by a correction, withdrawn by the lab, or not kept in a merge), kept for "
        "audit. The chart and the detector use the current values only.</p>"), "", refresh)


# --- the service ----------------------------------------------------------------------------

def _card(key: str, value: str, cls: str = "") -> str:
    badge = f'<span class="badge {cls}">{value}</span>' if cls else value
    return f'<div class="card"><div class="k">{e(key)}</div><div class="v">{badge}</div></div>'


def service_page(view: ServiceView, pm: ProcessMetrics,
                 refresh: Refresh = NO_REFRESH) -> str:
    now = view.now
    if pm.connected is None:
        conn, conn_cls = "unknown", "warn"
    elif pm.connected >= 1:
        conn, conn_cls = "connected", "ok"
    else:
        conn, conn_cls = "disconnected", "bad"
    rate = view.per_minute[-1] if view.per_minute else 0
    oldest_age = (now - view.oldest_pending) if view.oldest_pending is not None else None
    pending_cls = "ok" if not view.pending else (
        "bad" if (oldest_age or 0) > OVERDUE_SECONDS else "warn")
    mismatch = pm.provenance_mismatch
    prov_cls = "bad" if mismatch else ("ok" if mismatch is not None else "warn")
    prov = "mismatch at start" if mismatch else ("matches" if mismatch is not None else "unknown")
    cards = "".join((
        _card("Pages not delivered", f"{view.undelivered_count}",
              "bad" if view.undelivered_count else "ok"),
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
    nd_rows = "".join(
        f'<tr class="undelivered" data-mrn="{e(a.mrn)}"><td class="small" data-label="Decided">'
        f"{e(fmt_wall(a.created_at))}</td>"
        f'<td data-label="MRN"><a href="{e(patient_href(a.mrn))}">{e(a.mrn)}</a></td>'
        f'<td data-label="Page"><code>{e(a.body)}</code></td>'
        f'<td data-label="Stage">{stage_badge(a.stage)}</td>'
        f'<td data-label="Status">{e(delivery_text(a, now))}</td>'
        f'<td class="n" data-label="Attempts">{a.attempts}</td>'
        f'<td class="err" data-label="Pager\'s answer">{fmt_error(a.last_error) or "—"}</td>'
        "</tr>" for a in view.undelivered)
    not_delivered = (
        f'<table id="not-delivered-pages" class="stack"><thead><tr><th>Decided</th><th>MRN</th>'
        '<th>Page</th><th>Stage</th><th>Status</th><th class="n">Attempts</th>'
        f"<th>Pager's answer</th></tr></thead><tbody>{nd_rows}</tbody></table>"
        if nd_rows else '<p class="muted">None: every page decided reached the pager or is '
        f"within {OVERDUE_SECONDS:.0f} s of its decision.</p>")
    errs = (f'<table id="outbox-errors"><thead><tr><th>Decided</th><th>MRN</th><th>Page</th>'
            f'<th>Status</th><th class="n">Attempts</th><th>Pager\'s answer</th></tr></thead>'
            f"<tbody>{err_rows}</tbody></table>" if err_rows else '<p class="muted">None.</p>')
    return layout("Service", (
        f"<h1>Service</h1><p class=\"muted small\">As of {e(fmt_wall(now))}.</p>"
        f"{undelivered_alarm(view.undelivered_count)}"
        f'<div class="cards">{cards}</div>'
        f'<h2 id="not-delivered">Pages not delivered</h2><p class="small muted">Pages the '
        f"pager refused for good (dead-lettered) or has not accepted {OVERDUE_SECONDS:.0f} s "
        f"after the decision (latest first), with the pager's last answer: page the clinician "
        f"by other means.</p>{not_delivered}"
        f"<h2>Feed</h2>{per_min}"
        f"<h2>State provenance</h2><dl class=\"kv\" id=\"provenance\">{prov_rows}</dl>"
        f"<h2>This process</h2>{process}"
        f"<h2>Dead letters</h2><p class=\"small muted\">The latest (at most "
        f"{DEAD_LETTERS_SHOWN}) among the last {view.dead_letters_window:,} messages, with the "
        f"reason each was set aside.</p><div class=\"scroll\">{dead}</div>"
        f"<h2>Pager errors</h2><p class=\"small muted\">Latest pages whose delivery failed at "
        f"least once, with the pager's last answer.</p><div class=\"scroll\">{errs}</div>"),
        "service", refresh)
