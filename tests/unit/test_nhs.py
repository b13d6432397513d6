"""The NHS England algorithm, case by case from the published rules (contract §7)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aki_alert.detect import Patient
from aki_alert.detect.nhs import NhsDetector, nhs_stage
from aki_alert.timeutil import DAY, HOUR

T = 1_000 * DAY  # the new result's time


def stage(history, value, t=T):
    times = [t - age for age, _ in history]
    order = sorted(range(len(times)), key=times.__getitem__)
    return nhs_stage([times[i] for i in order], [history[i][1] for i in order], t, value)


def test_no_previous_result_is_never_aki():
    assert stage([], 900.0).stage == 0


def test_only_results_older_than_a_year_give_no_ratio():
    r = stage([(366 * DAY, 50.0)], 500.0)
    assert (r.stage, r.ratio) == (0, None)


@pytest.mark.parametrize("value, expected", [
    (149.0, 0), (150.0, 1), (199.0, 1), (200.0, 2), (299.0, 2), (300.0, 3), (900.0, 3),
])
def test_stages_by_ratio_to_the_lowest_result_of_the_last_seven_days(value, expected):
    r = stage([(3 * DAY, 100.0), (5 * DAY, 130.0)], value)
    assert r.stage == expected
    assert r.baseline == 100.0


def test_rv2_is_the_median_of_results_8_to_365_days_ago():
    r = stage([(10 * DAY, 80.0), (100 * DAY, 100.0), (200 * DAY, 300.0)], 200.0)
    assert r.baseline == 100.0 and r.ratio == 2.0 and r.stage == 2


def test_median_of_an_even_count_is_the_mean_of_the_middle_two():
    r = stage([(10 * DAY, 80.0), (100 * DAY, 120.0)], 150.0)
    assert r.baseline == 100.0 and r.stage == 1


def test_the_higher_ratio_of_rv1_and_rv2_wins():
    # RV1 = 150 (ratio 1.2), RV2 = 90 (ratio 2.0): stage 2 from RV2.
    r = stage([(1 * DAY, 150.0), (30 * DAY, 90.0)], 180.0)
    assert (r.stage, r.baseline) == (2, 90.0)


def test_above_354_with_ratio_1_5_is_stage_3():
    assert stage([(DAY, 240.0)], 360.0).stage == 3      # ratio 1.5, C1 > 354
    assert stage([(DAY, 240.0)], 354.0).stage == 1      # not above 354


def test_rise_over_26_within_48_hours_is_stage_1_without_a_ratio():
    assert stage([(47 * HOUR, 100.0)], 127.0).stage == 1
    assert stage([(47 * HOUR, 100.0)], 126.0).stage == 0
    assert stage([(49 * HOUR, 100.0)], 127.0).stage == 0   # older than 48 h


def test_results_at_or_after_the_new_time_are_ignored():
    p = Patient("1", [T - DAY, T, T + DAY], [100.0, 10.0, 10.0])
    assert nhs_stage(p.times, p.values, T, 160.0).baseline == 100.0


def test_detector_positive_from_min_stage():
    p = Patient("1", [T - DAY], [100.0])
    full, simplified = NhsDetector(), NhsDetector(min_stage=2)
    assert full.judge(p, T, 160.0).positive and not simplified.judge(p, T, 160.0).positive
    j = simplified.judge(p, T, 210.0)
    assert j.positive and j.stage == 2 and j.ratio == 2.1 and j.detector == "nhs"


history = st.lists(st.tuples(st.integers(1, 400 * DAY), st.floats(20.0, 1000.0)), max_size=15)


@given(history, st.floats(20.0, 1000.0), st.floats(0.0, 500.0))
def test_a_higher_new_result_never_lowers_the_stage(hist, value, extra):
    assert stage(hist, value + extra).stage >= stage(hist, value).stage
