"""The strict scorer against hand-made cases of contract §5."""

from __future__ import annotations

import pytest

from aki_alert.hospital.datafiles import AkiRow
from aki_alert.hospital.scoring import Scorer, f3, nhs_reference_f3, percentile

T = 1_000_000           # patient A's AKI time
ROWS = [AkiRow("A", T, True, True), AkiRow("B", 2 * T, True, False),
        AkiRow("C", 3 * T, False, True)]


def scorer() -> Scorer:
    s = Scorer(ROWS)
    s.result_sent("A", T - 100, 1.0)
    s.result_sent("A", T, 10.0)
    s.result_sent("B", 2 * T, 20.0)
    return s


def test_f3_formula():
    assert f3(1, 0, 0) == 1.0
    assert f3(0, 0, 0) == 0.0
    assert f3(2, 1, 1) == pytest.approx(20 / (20 + 9 + 1))


def test_exact_time_page_is_a_true_positive_with_latency():
    s = scorer()
    s.page("A", T, 10.25)
    r = s.score()
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)       # B never paged
    assert r.latency_p50 == pytest.approx(0.25)


def test_late_page_still_counts_as_true_positive():
    s = scorer()
    s.page("A", T, 3600.0)
    r = s.score()
    assert r.tp == 1 and r.latency_p90 == pytest.approx(3590.0)


def test_wrong_time_page_is_a_false_positive_and_the_aki_a_false_negative():
    s = scorer()
    s.page("A", T - 100, 11.0)
    r = s.score()
    assert (r.tp, r.fp, r.fn) == (0, 1, 2)
    assert r.latency_p50 is None                  # non-AKI pages have no latency


def test_wrong_time_then_right_time_is_strict():
    s = scorer()
    s.page("A", T - 100, 11.0)
    s.page("A", T, 12.0)
    r = s.score()
    assert (r.tp, r.fp, r.fn) == (1, 1, 1)
    assert r.f3 <= 1.0


def test_repeated_page_counts_once():
    s = scorer()
    for at in (11.0, 12.0, 13.0):
        s.page("A", T, at)
        s.page("C", 5, at)
    r = s.score()
    assert (r.tp, r.fp, r.pages) == (1, 1, 6)
    assert r.latency_p99 == pytest.approx(1.0)    # the first arrival


def test_page_before_the_result_was_acked_counts_from_the_send():
    s = Scorer(ROWS)
    s.result_sent("A", T, 10.0)                   # sent, not yet acknowledged
    s.page("A", T, 10.01)
    assert s.score().tp == 1 and s.score().latency_p50 == pytest.approx(0.01)


def test_page_before_the_result_was_sent_is_a_true_positive_without_latency():
    s = Scorer(ROWS)
    s.page("A", T, 5.0)
    s.result_sent("A", T, 10.0)
    r = s.score()
    assert r.tp == 1 and r.early_pages == 1 and r.latency_p50 is None


def test_page_without_time_means_the_latest_result():
    s = scorer()
    assert s.page("A", None, 11.0) == ("A", T)
    assert s.page("Z", None, 11.0) == ("Z", None)
    r = s.score()
    assert (r.tp, r.fp) == (1, 1)


def test_live_view_counts_false_negatives_only_for_results_sent():
    s = Scorer(ROWS)
    assert s.score(only_sent=True).fn == 0
    s.result_sent("B", 2 * T, 1.0)
    assert s.score(only_sent=True).fn == 1
    assert s.score().fn == 2


def test_nhs_reference_from_the_aki_csv_columns():
    assert nhs_reference_f3(ROWS) == pytest.approx(f3(1, 1, 1))
    assert scorer().score().nhs_f3 == pytest.approx(10 / 20)


def test_percentile_interpolates():
    assert percentile([], 50) is None
    assert percentile([1.0], 99) == 1.0
    assert percentile([0.0, 1.0, 2.0, 3.0], 50) == pytest.approx(1.5)
    assert percentile(list(map(float, range(101))), 90) == pytest.approx(90.0)
