"""Why a page was sent, whether it reached the pager, what happened since (console/explain.py,
pure), and how the renderers word and draw it: each NHS rule named, a page the pager never got
in red, names isolated and cut, the query-string rules."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from aki_alert.console import render, server
from aki_alert.console.explain import (ABSOLUTE, OVERDUE_SECONDS, RATIO, RISE, not_delivered,
                                       page_reason, since_page, trend)
from aki_alert.console.queries import Alert, AlertList, PatientView, Result, ServiceView
from aki_alert.timeutil import DAY, HOUR, parse_hl7_time

NS = {"s": "http://www.w3.org/2000/svg"}
T0 = parse_hl7_time("20240301080000")
NOW = 1_800_000_000.0


def alert(**kw) -> Alert:
    base = dict(id=1, mrn="7", result_time=T0, body="7,20240301080000", created_at=NOW - 5,
                status="delivered", attempts=1, last_error=None, delivered_at=NOW - 4,
                detector="nhs", version="v", score=2.0, threshold=1.0, stage=2, baseline=98.0,
                ratio=2.55, value=250.0, name="ANN")
    base.update(kw)
    return Alert(**base)


def reason_of(results, a):
    times, values = [t for t, _ in results], [v for _, v in results]
    return page_reason(a.stage, a.ratio, a.baseline, a.value, a.result_time, times, values)


# --- the rule, from the stored explanation and the results -----------------------------------

def test_a_ratio_page_names_the_ratio_rule_and_its_reference_value():
    res = [(T0 - 2 * DAY, 98.0), (T0, 250.0)]
    r = reason_of(res, alert())
    assert (r.rule, r.window, r.ratio_stage, r.rise_from) == (RATIO, "RV1", 2, None)
    res = [(T0 - 30 * DAY, 80.0), (T0, 250.0)]
    assert reason_of(res, alert(baseline=80.0, ratio=3.125, stage=3)).window == "RV2"


def test_an_absolute_page_is_the_absolute_rule_not_the_ratio():
    res = [(T0 - DAY, 168.0), (T0, 380.0)]
    r = reason_of(res, alert(stage=3, baseline=168.0, ratio=380 / 168, value=380.0))
    assert (r.rule, r.ratio_stage, r.window) == (ABSOLUTE, 2, "RV1")


def test_a_rise_page_names_the_result_it_rose_from():
    res = [(T0 - 3 * DAY, 70.0), (T0 - 30 * HOUR, 60.0), (T0 - 10 * HOUR, 75.0), (T0, 89.0)]
    r = reason_of(res, alert(stage=1, baseline=60.0, ratio=89 / 60, value=89.0))
    assert (r.rule, r.rise_from, r.rise) == (RISE, (T0 - 30 * HOUR, 60.0), 29.0)
    # Without a ratio at all (no result in the year but within 48 hours is impossible; a
    # detector without a baseline): still the rise.
    r = reason_of(res, alert(stage=1, baseline=None, ratio=None, value=89.0))
    assert r.rule == RISE and r.window is None


def test_a_model_page_without_an_nhs_stage_names_no_rule():
    r = reason_of([(T0 - DAY, 100.0), (T0, 130.0)], alert(stage=0, ratio=1.3, baseline=100.0))
    assert r.rule is None and r.stage == 0


# --- delivery and what happened since --------------------------------------------------------

@pytest.mark.parametrize("status, age, expected", [
    ("dead", 1, True), ("pending", OVERDUE_SECONDS + 1, True), ("pending", 5, False),
    ("delivered", 10_000, False), ("suppressed", 10_000, False),
])
def test_not_delivered(status, age, expected):
    assert not_delivered(status, NOW - age, NOW) is expected
    assert alert(status=status, created_at=NOW - age).not_delivered(NOW) is expected


def test_since_the_page_and_its_trend():
    assert trend(100.0, 111.0) == "rising" and trend(100.0, 89.0) == "falling"
    assert trend(100.0, 109.0) == "steady" and trend(None, 100.0) is None
    s = since_page(380.0, 2, T0 + 2 * DAY, 250.0)
    assert (s.count, s.latest_time, s.change, s.trend) == (2, T0 + 2 * DAY, -130.0, "falling")
    assert since_page(380.0, 0, None, None).count == 0


# --- the words --------------------------------------------------------------------------------

def patient(results, *pages, name="ANN") -> str:
    view = PatientView("7", name, None, "F", True, None,
                       [Result(t, v, "feed") for t, v in results], [], list(pages))
    return render.patient_page(view, NOW)


def test_the_absolute_rule_is_explained_as_such_and_drawn():
    res = [(T0 - DAY, 168.0), (T0, 380.0), (T0 + DAY, 300.0)]
    a = alert(stage=3, baseline=168.0, ratio=380 / 168, value=380.0, score=3.0, since_count=1,
              latest_time=T0 + DAY, latest_value=300.0)
    page = patient(res, a)
    assert "creatinine 380 µmol/L is above 354 µmol/L, with a ratio of 2.26× the baseline 168 " \
           "µmol/L (RV1, the lowest result of the previous 7 days)" in page
    assert "by the absolute rule (C1 &gt; 354 µmol/L with C1/RV1 ≥ 1.5)" in page
    assert "The ratio alone would be stage 2" in page
    assert "by the ratio rule" not in page
    root = ET.fromstring(page.split('<div class="chart">')[1].split("</svg>")[0] + "</svg>")
    line = root.find(".//s:line[@class='absolute']", NS)
    assert line is not None and line.get("data-value") == "354"
    point = root.find(f".//s:circle[@data-time='{T0}']", NS)
    assert float(point.get("cy")) < float(line.get("y1"))     # the point is above the line
    assert "page · stage 3 (&gt; 354)" in page
    # What happened since: one result, 300, falling.
    assert "Since the page: 1 result; the latest, 300 µmol/L on 2024-03-02 08:00, 80 µmol/L " \
           "lower than the paged result (0.79×)." in page and "↓ falling" in page


def test_the_ratio_rule_is_explained_with_its_threshold():
    page = patient([(T0 - 2 * DAY, 98.0), (T0, 250.0)], alert())
    assert "creatinine 250 µmol/L is 2.55× the baseline 98 µmol/L (RV1, the lowest result of " \
           "the previous 7 days) → <span class=\"badge s2\">stage 2</span>, by the ratio rule " \
           "(C1/RV1 ≥ 2)." in page
    assert "No result since the page." in page
    assert '<line class="absolute"' not in page


def test_the_rise_is_explained_and_drawn():
    res = [(T0 - 30 * HOUR, 60.0), (T0, 89.0)]
    page = patient(res, alert(stage=1, baseline=60.0, ratio=89 / 60, value=89.0, score=1.0))
    assert "creatinine 89 µmol/L: a rise of 29 µmol/L over the result of 2024-02-29 02:00 " \
           "(60 µmol/L), more than 26 µmol/L within 48 hours" in page
    assert "by the 48-hour rise rule. The ratio, 1.48× the baseline 60 µmol/L" in page
    assert "is under 1.5" in page
    assert f'<g class="rise" data-time="{T0}" data-from="{T0 - 30 * HOUR}" data-rise="29"' \
        in page


def test_a_page_without_an_nhs_stage_says_the_detector_paged():
    page = patient([(T0 - DAY, 100.0), (T0, 130.0)],
                   alert(stage=0, baseline=100.0, ratio=1.3, value=130.0, detector="model"))
    assert "no NHS rule fired; paged on the detector's score" in page


def test_a_dead_page_reads_not_delivered_in_the_headline_with_the_pagers_answer():
    a = alert(status="dead", delivered_at=None, last_error="400 Bad Request: unknown MRN")
    page = patient([(T0 - 2 * DAY, 98.0), (T0, 250.0)], a)
    assert '<div class="explain undelivered"' in page
    assert "Not delivered: the page for the result of 2024-03-01 08:00 never reached the " \
           "pager</strong> (it refused the page; dead-lettered after 1 attempt(s))" in page
    assert "The pager answered: <bdi>400 Bad Request: unknown MRN</bdi>" in page
    assert "Paged for the result" not in page
    assert 'id="undelivered" role="alert">1 page for this patient <strong>not delivered' in page


def test_a_page_pending_long_after_reads_not_delivered():
    a = alert(status="pending", attempts=4, last_error="timeout", delivered_at=None,
              created_at=NOW - 600)
    page = patient([(T0 - 2 * DAY, 98.0), (T0, 250.0)], a)
    assert "never reached the pager</strong> (still pending 10 min after the decision, " \
           "4 attempt(s))" in page
    fresh = patient([(T0 - 2 * DAY, 98.0), (T0, 250.0)],
                    alert(status="pending", attempts=0, created_at=NOW - 2, delivered_at=None))
    assert "Not delivered" not in fresh and "Paged for the result" in fresh


def test_the_alerts_list_shows_undelivered_pages_in_red_with_a_headline():
    dead = alert(id=2, mrn="71", status="dead", last_error="400 Bad Request: unknown MRN",
                 delivered_at=None)
    ok = alert(id=1, since_count=2, latest_time=T0 + DAY, latest_value=300.0)
    html = render.alerts_page(AlertList([dead, ok], {"dead": 1, "delivered": 1}, None, 1), NOW)
    assert 'id="undelivered" role="alert">1 page in the outbox <strong>not delivered' in html
    row = html.split('data-mrn="71"')[1].split("</tr>")[0]
    assert 'class="alert undelivered"' in html.split('data-mrn="71"')[0][-40:]
    assert '<span class="badge d-undelivered"' in row and "not delivered</span>" in row
    assert "pager: <bdi>400 Bad Request: unknown MRN</bdi>" in row
    good = html.split('data-mrn="7"')[1].split("</tr>")[0]
    assert 'data-trend="rising">↑ 300 (+50)</span>' in good and "d-undelivered" not in good
    assert 'id="undelivered"' not in render.alerts_page(AlertList([ok], {}, None, 0), NOW)


def test_the_service_page_is_red_when_a_page_was_not_delivered():
    dead = alert(id=2, mrn="71", status="dead", last_error="400 Bad Request: unknown MRN")
    view = ServiceView(NOW, {}, 0, None, [0] * 5, 0, None, {"dead": 1}, None, [], 100, [],
                       [dead], 1)
    pm = render.ProcessMetrics(1, {}, {}, {}, 0, 1)
    html = render.service_page(view, pm)
    assert '<div class="k">Pages not delivered</div><div class="v"><span class="badge bad">1' \
        in html
    assert 'id="undelivered" role="alert"' in html
    table = html.split('id="not-delivered-pages"')[1].split("</table>")[0]
    assert "not delivered: the pager refused it (dead-lettered)" in table
    assert "<bdi>400 Bad Request: unknown MRN</bdi>" in table
    clean = ServiceView(NOW, {}, 0, None, [0] * 5, 0, None, {}, None, [], 100, [], [], 0)
    html = render.service_page(clean, pm)
    assert '<span class="badge ok">0</span>' in html and 'role="alert"' not in html


# --- names ------------------------------------------------------------------------------------

def test_names_are_isolated_and_cut_with_the_full_name_in_the_title():
    assert render.fmt_name("ANN SMITH") == '<bdi class="name">ANN SMITH</bdi>'
    long = "ب" * 30 + " " + "A" * 30
    html = render.fmt_name(long)
    shown = html.split(">")[1].split("<")[0]
    assert len(shown) == render.NAME_MAX and shown.endswith("…")
    assert f'title="{long}"' in html and html.startswith('<bdi class="name"')
    assert render.fmt_name("<b>&") == '<bdi class="name">&lt;b&gt;&amp;</bdi>'
    assert render.fmt_name(None) == '<span class="muted">—</span>'
    # Everywhere a name is shown.
    page = patient([(T0, 250.0)], alert(), name=long)
    assert '<div class="v" id="name"><bdi class="name" title=' in page
    assert long not in page.replace(f'title="{long}"', "")


# --- refresh ----------------------------------------------------------------------------------

def test_the_page_refreshes_itself_and_can_be_paused():
    on = render.layout("x", "", refresh=render.Refresh(30, "/?before=5"))
    assert '<meta http-equiv="refresh" content="30">' in on
    assert 'Updates every 30 s · <a href="/?before=5&amp;refresh=0">pause</a>' in on
    paused = render.layout("x", "", refresh=render.Refresh(0, "/service", paused=True))
    assert "http-equiv" not in paused and '<a href="/service">resume</a>' in paused
    assert "http-equiv" not in render.layout("x", "") and 'id="refresh"' not in \
        render.layout("x", "")


# --- query strings ----------------------------------------------------------------------------

@pytest.mark.parametrize("query, says", [
    ("page=abc", "Unknown query parameter 'page'"), ("status=dead", "Unknown query parameter"),
    ("limit=-1", "limit= takes a number of pages from 1 to 1000"), ("limit=0", "limit="),
    ("limit=1001", "limit="), ("before=x'", "before= takes a page id"), ("before=", "before="),
    ("before=0", "before="), ("before=99999999999999999999", "before="),
    ("before=١٢", "before="), ("refresh=2", "refresh= takes 0"), ("refresh=abc", "refresh="),
    ("before=3&before=4", "given more than once"), ("limit", "cannot be read"),
    ("before=%ff", "cannot be read"), ("a=1&b=2&c=3&d=4&e=5", "cannot be read"),
])
def test_bad_query_values_are_refused_with_the_reason(query, says):
    with pytest.raises(server.BadQuery, match=None) as e:
        server.parse_query(query, server.ALERTS_QUERY)
    assert says in str(e.value)


def test_good_query_values():
    q = server.parse_query("before=12&limit=50&refresh=0", server.ALERTS_QUERY)
    assert q == {"before": 12, "limit": 50, "refresh": 0}
    assert server.parse_query("", server.PAGE_QUERY) == {}
    with pytest.raises(server.BadQuery, match="this page takes refresh= only"):
        server.parse_query("before=1", server.PAGE_QUERY)


def test_the_patient_page_shows_the_episode_the_service_holds():
    view = PatientView("7", "ANN", None, "F", True, T0, [Result(T0, 380.0, "feed")], [], [])
    page = render.patient_page(view, NOW)
    start, end = render.fmt_sample(T0), render.fmt_sample(T0 + 90 * DAY)
    assert f'id="episode">from {start} to {end}<' in page
    view.episode_start = None
    assert 'id="episode">none<' in render.patient_page(view, NOW)
