"""Which rule of the NHS algorithm gave a stage (`nhs_reason`, `stage_rule`): what the console's
explanations say, checked rule by rule and against `nhs_stage` itself on any input."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aki_alert.detect.nhs import (ABSOLUTE, RATIO, RISE, nhs_reason, nhs_stage, ratio_stage,
                                  stage_rule)
from aki_alert.timeutil import DAY, HOUR

T = 1_000 * DAY  # the new result's time


def reason(history, value, t=T):
    pairs = sorted((t - age, v) for age, v in history)
    return nhs_reason([p[0] for p in pairs], [p[1] for p in pairs], t, value)


def test_a_ratio_stage_names_the_ratio_and_its_reference_value():
    r = reason([(3 * DAY, 100.0), (5 * DAY, 130.0)], 250.0)
    assert (r.stage, r.rule, r.baseline, r.ratio, r.window) == (2, RATIO, 100.0, 2.5, "RV1")
    r = reason([(10 * DAY, 80.0), (100 * DAY, 100.0), (200 * DAY, 300.0)], 320.0)
    assert (r.stage, r.rule, r.baseline, r.window) == (3, RATIO, 100.0, "RV2")


def test_stage_3_above_354_with_a_ratio_under_3_is_the_absolute_rule():
    # 380 / 168 = 2.26: the ratio alone is stage 2; > 354 µmol/L makes it 3.
    r = reason([(2 * DAY, 168.0)], 380.0)
    assert (r.stage, r.rule, r.window) == (3, ABSOLUTE, "RV1")
    assert r.ratio == pytest.approx(2.26, abs=0.01) and ratio_stage(r.ratio) == 2
    # Above 354 with a ratio of 3 or more is the ratio's own stage 3.
    assert reason([(2 * DAY, 120.0)], 400.0).rule == RATIO
    # Above 354 without a ratio of 1.5 is no stage at all.
    assert reason([(3 * DAY, 300.0)], 400.0).stage == 0


def test_stage_1_without_a_ratio_is_the_48_hour_rise():
    # 89 / 60 = 1.48: no ratio stage; 89 - 60 = 29 > 26 within 48 hours.
    r = reason([(30 * HOUR, 60.0), (10 * HOUR, 70.0)], 89.0)
    assert (r.stage, r.rule, r.rise_from) == (1, RISE, (T - 30 * HOUR, 60.0))
    assert r.ratio == pytest.approx(89 / 60) and ratio_stage(r.ratio) == 0
    # A rise of exactly 26 is not enough; one over 48 hours ago does not count.
    assert reason([(10 * HOUR, 69.0)], 95.0).stage == 0
    assert reason([(49 * HOUR, 70.0), (10 * HOUR, 90.0)], 95.0).stage == 0


def test_no_previous_result_is_no_rule():
    r = reason([], 900.0)
    assert (r.stage, r.rule, r.baseline, r.window, r.rise_from) == (0, None, None, None, None)


@pytest.mark.parametrize("stage, ratio, rule", [
    (3, 3.0, RATIO), (3, 5.2, RATIO), (3, 2.26, ABSOLUTE), (3, 1.5, ABSOLUTE),
    (2, 2.0, RATIO), (2, 2.99, RATIO), (1, 1.5, RATIO), (1, 1.99, RATIO),
    (1, None, RISE), (1, 1.2, RISE), (0, 2.5, None), (None, 2.5, None),
    (2, 1.7, None), (3, 1.2, None), (2, None, None), (1, 2.5, None),
])
def test_the_rule_from_a_stored_explanation(stage, ratio, rule):
    assert stage_rule(stage, ratio) == rule


_times = st.lists(st.integers(0, 400 * DAY // HOUR), max_size=12, unique=True)


@given(ages=_times, data=st.data())
def test_nhs_reason_agrees_with_nhs_stage(ages, data):
    values = data.draw(st.lists(st.floats(1.0, 1200.0), min_size=len(ages), max_size=len(ages)))
    value = data.draw(st.floats(1.0, 1200.0))
    pairs = sorted((T - a * HOUR, v) for a, v in zip(ages, values, strict=True))
    times, vals = [p[0] for p in pairs], [p[1] for p in pairs]
    got, want = nhs_reason(times, vals, T, value), nhs_stage(times, vals, T, value)
    assert (got.stage, got.baseline, got.ratio) == (want.stage, want.baseline, want.ratio)
    assert got.rule == stage_rule(want.stage, want.ratio)
    assert (got.rule is None) == (got.stage == 0)
