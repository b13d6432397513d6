"""The pure renderers: the SVG chart (points, baseline, marker, shading, windows) and escaping."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from aki_alert.console import render
from aki_alert.console.queries import Alert, AlertList, PatientView, Result, Stay
from aki_alert.timeutil import DAY, HOUR, parse_hl7_time

NS = {"s": "http://www.w3.org/2000/svg"}
T0 = parse_hl7_time("20240301080000")


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)      # well-formed XML, or this raises


def results_fixture():
    # history 100 (30 d before), 110 (20 d), 90 (10 d): RV2 = 100; 7 days: 120, 98 → RV1 = 98
    return [(T0 - 30 * DAY, 100.0), (T0 - 20 * DAY, 110.0), (T0 - 10 * DAY, 90.0),
            (T0 - 5 * DAY, 120.0), (T0 - 2 * DAY, 98.0), (T0, 250.0), (T0 + DAY, 180.0)]


def circles(root):
    return root.findall(".//s:circle[@class='result']", NS) + \
        root.findall(".//s:circle[@class='result history']", NS)


def test_every_result_is_a_point_in_time_order_and_scale():
    res = results_fixture()
    root = parse(render.chart_svg(res))
    pts = sorted(circles(root), key=lambda c: int(c.get("data-time")))
    assert [(int(c.get("data-time")), float(c.get("data-value"))) for c in pts] == res
    xs = [float(c.get("cx")) for c in pts]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)
    assert all(render.X0 <= x <= render.X1 for x in xs)
    ys = {float(c.get("data-value")): float(c.get("cy")) for c in pts}
    assert ys[250.0] < ys[180.0] < ys[120.0] < ys[90.0]          # higher value, higher up
    # y is linear from 0 at the bottom of the plot.
    assert (render.Y1 - ys[250.0]) / 250.0 == pytest.approx((render.Y1 - ys[90.0]) / 90.0,
                                                            rel=1e-2)
    trend = root.find(".//s:polyline[@class='trend']", NS)
    assert len(trend.get("points").split()) == len(res)


def test_the_paged_result_is_marked_at_its_point_and_the_baseline_drawn():
    res = results_fixture()
    page = render.ChartPage(T0, 250.0, 98.0, "RV1", 2)
    root = parse(render.chart_svg(res, [page]))
    (trigger,) = root.findall(".//s:g[@class='trigger']", NS)
    assert int(trigger.get("data-time")) == T0 and trigger.get("data-stage") == "2"
    point = next(c for c in circles(root) if int(c.get("data-time")) == T0)
    ring = trigger.find("s:circle", NS)
    assert (ring.get("cx"), ring.get("cy")) == (point.get("cx"), point.get("cy"))
    (base,) = root.findall(".//s:g[@class='baseline']", NS)
    assert float(base.get("data-value")) == 98.0 and base.get("data-window") == "RV1"
    same = next(c for c in circles(root) if float(c.get("data-value")) == 98.0)
    solid, dashed = base.findall("s:line", NS)
    assert solid.get("y1") == solid.get("y2") == same.get("cy")      # at the baseline's value
    assert float(solid.get("x2")) == pytest.approx(float(point.get("cx")))   # window ends at C1
    assert float(dashed.get("x2")) == render.X1
    labels = [t.text for t in root.findall(".//s:text[@class='line-label']", NS)]
    assert "baseline 98 (RV1)" in labels
    thresholds = [float(t.get("data-value")) for t in
                  root.findall(".//s:line[@class='threshold']", NS)]
    assert thresholds[:2] == [pytest.approx(147.0), pytest.approx(196.0)]


def test_nhs_windows_of_the_latest_page_are_indicated():
    res = results_fixture()
    root = parse(render.chart_svg(res, [render.ChartPage(T0, 250.0, 98.0, "RV1", 2)]))
    rv1 = root.find(".//s:rect[@class='window rv1']", NS)
    rv2 = root.find(".//s:rect[@class='window rv2']", NS)
    assert (int(rv1.get("data-start")), int(rv1.get("data-end"))) == (T0 - 7 * DAY, T0)
    assert (int(rv2.get("data-start")), int(rv2.get("data-end"))) == (T0 - 365 * DAY,
                                                                      T0 - 7 * DAY)
    # RV2 reaches back beyond the first result: clipped to the plot.
    assert float(rv2.get("x")) >= render.X0
    assert float(rv2.get("x")) + float(rv2.get("width")) == pytest.approx(float(rv1.get("x")))
    assert "RV1 (baseline)" in render.chart_svg(res, [render.ChartPage(T0, 250, 98, "RV1", 2)])


def test_admissions_are_shaded_and_an_open_stay_runs_to_the_end():
    res = results_fixture()
    stays = [(T0 - 6 * DAY, T0 - 4 * DAY), (T0 - HOUR, None)]
    root = parse(render.chart_svg(res, [], stays))
    closed, open_ = root.findall(".//s:rect[@class='stay']", NS)
    pts = {int(c.get("data-time")): float(c.get("cx")) for c in circles(root)}
    assert float(closed.get("x")) < pts[T0 - 5 * DAY] < float(closed.get("x")) + float(
        closed.get("width"))
    assert float(closed.get("x")) > pts[T0 - 10 * DAY]
    assert open_.get("data-end") == "" and float(open_.get("x")) + float(
        open_.get("width")) == pytest.approx(render.X1)
    assert float(closed.get("height")) == render.Y1 - render.Y0


def test_history_results_are_hollow():
    root = parse(render.chart_svg([(T0, 100.0), (T0 + DAY, 120.0)], sources=["history", "feed"]))
    hist = root.findall(".//s:circle[@class='result history']", NS)
    feed = root.findall(".//s:circle[@class='result']", NS)
    assert len(hist) == 1 and len(feed) == 1 and hist[0].get("fill") == "#fff"


def test_degenerate_charts():
    assert "No creatinine results" in render.chart_svg([])
    root = parse(render.chart_svg([(T0, 80.0)], [render.ChartPage(T0, 80.0, None, None, 1)]))
    assert len(circles(root)) == 1 and root.find(".//s:g[@class='trigger']", NS) is not None
    assert root.find(".//s:g[@class='baseline']", NS) is None


def test_baseline_window_classification():
    times = [t for t, _ in results_fixture()]
    values = [v for _, v in results_fixture()]
    assert render.baseline_window(times, values, T0, 98.0) == "RV1"
    assert render.baseline_window(times, values, T0, 100.0) == "RV2"    # median 100, 110, 90
    assert render.baseline_window(times, values, T0, 55.0) is None
    assert render.baseline_window(times, values, T0, None) is None


def test_axis_helpers():
    assert render.nice_step(230) == 50 and render.nice_step(9) == 2 and render.nice_step(0) == 1
    ticks = render.time_ticks(T0, T0 + 30 * DAY)
    assert 2 <= len(ticks) <= 7 and ticks == sorted(ticks) and all(t % DAY == 0 for t in ticks)
    assert all(t % HOUR == 0 for t in render.time_ticks(T0, T0 + 10 * HOUR))


def alert(**kw) -> Alert:
    base = dict(id=1, mrn="7", result_time=T0, body="7,20240301080000", created_at=0.0,
                status="pending", attempts=0, last_error=None, delivered_at=None, detector="nhs",
                version="v", score=2.0, threshold=1.0, stage=2, baseline=98.0, ratio=2.55,
                value=250.0, name="ANN")
    base.update(kw)
    return Alert(**base)


def test_text_from_the_state_is_escaped_in_every_renderer():
    evil = "<img src=x onerror=alert(1)>&\"'"
    a = alert(name=evil, mrn="7", last_error=evil, status="dead", detector=evil, version=evil)
    html = render.alerts_page(AlertList([a], {"dead": 1}, None), 0.0)
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;&amp;&quot;&#x27;" in html
    view = PatientView("7", evil, None, evil, True, None, [Result(T0, 250.0, "feed")],
                       [Stay(T0 - DAY, None)], [a])
    page = render.patient_page(view)
    assert "<img" not in page and "&lt;img" in page
    assert "<img" not in render.error_page(404, evil, evil)


def test_delivery_states():
    assert alert(status="pending", attempts=0).delivery == "pending"
    assert alert(status="pending", attempts=3).delivery == "retrying"
    assert alert(status="dead", attempts=1).delivery == "dead"
    assert "dead-lettered" in render.delivery_badge(alert(status="dead", last_error="400 no"))
    assert "400 no" in render.delivery_badge(alert(status="dead", last_error="400 no"))


def test_patient_page_explains_the_48_hour_rule():
    view = PatientView("7", "ANN", None, "F", True, None,
                       [Result(T0 - DAY, 100.0, "feed"), Result(T0, 130.0, "feed")], [],
                       [alert(stage=1, ratio=1.3, baseline=100.0, value=130.0, score=1.0)])
    page = render.patient_page(view)
    assert "a rise of 30 µmol/L" in page and "within 48 hours" in page
