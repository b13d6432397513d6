"""The shared feature function: explicit missing values, no look-ahead, agreement with NHS."""

from __future__ import annotations

import math
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aki_alert.detect.features import FEATURE_SETS, FEATURES, FEATURES_F1, features
from aki_alert.detect.nhs import nhs_stage
from aki_alert.timeutil import DAY, HOUR

T = 1000 * DAY


def f(times, values, value, age=50.0, sex="F", time=T):
    return dict(zip(FEATURES, features(times, values, time, value, age, sex), strict=True))


def test_no_previous_results_is_explicit():
    x = f([], [], 120.0, age=None, sex=None)
    assert x["value"] == 120.0
    assert (x["has_prev"], x["has_rv1"], x["has_rv2"]) == (0.0, 0.0, 0.0)
    assert x["rv1_ratio"] == x["rv2_ratio"] == x["nhs_ratio"] == x["last_ratio"] == 1.0
    assert x["rise_48h"] == x["rise_7d"] == 0.0
    assert x["n_prev"] == 0.0 and x["days_since_last"] == 365.0
    assert (x["age"], x["has_age"], x["sex_f"], x["has_sex"]) == (-1.0, 0.0, 0.0, 0.0)


def test_windows_and_ratios_by_hand():
    times = [T - 10 * DAY, T - 2 * DAY, T - 23 * HOUR, T - 60]
    values = [70.0, 75.0, 72.0, 90.0]
    x = f(times, values, 140.0, age=40.0, sex="m")
    assert x["rv1_ratio"] == pytest.approx(140 / 72)  # lowest of the previous 7 days
    assert x["rv2_ratio"] == pytest.approx(2.0)  # median of 8-365 days before
    assert x["nhs_ratio"] == pytest.approx(2.0)
    assert x["rise_48h"] == pytest.approx(68.0)  # the result exactly 48 h before counts
    assert x["rise_7d"] == pytest.approx(68.0)
    assert x["last_ratio"] == pytest.approx(140 / 90)
    assert (x["n_prev"], x["n_7d"], x["n_48h"]) == (4.0, 3.0, 3.0)
    assert x["days_since_last"] == pytest.approx(60 / DAY)
    assert (x["age"], x["has_age"], x["sex_f"], x["has_sex"]) == (40.0, 1.0, 0.0, 1.0)


def test_assay_robust_rises_and_the_nhs_stage_by_hand():
    times = [T - 100 * DAY, T - 10 * DAY, T - 2 * DAY, T - 60]
    values = [60.0, 80.0, 70.0, 90.0]
    x = f(times, values, 150.0)
    assert x["rise_rv2"] == pytest.approx(150 - 70)  # median of 60 and 80
    assert x["rise_min"] == pytest.approx(90.0) and x["rise_last"] == pytest.approx(60.0)
    assert (x["nhs_stage"], x["nhs_rise_48h"]) == (2.0, 1.0)  # 150/70 >= 2; 150 - 90 > 26
    y = f([T - HOUR], [100.0], 127.0)  # no ratio stage, but more than 26 µmol/L in 48 h
    assert (y["nhs_stage"], y["nhs_rise_48h"]) == (1.0, 1.0)
    z = f([T - 20 * DAY], [100.0], 360.0)  # > 354 µmol/L with a ratio >= 1.5: stage 3
    assert z["nhs_stage"] == 3.0
    empty = f([], [], 500.0)
    assert (empty["rise_rv2"], empty["rise_min"], empty["nhs_stage"]) == (0.0, 0.0, 0.0)


def test_every_feature_set_keeps_its_names_and_f1_is_a_prefix_of_f2():
    assert FEATURE_SETS["f1"][0] == FEATURES_F1 and FEATURE_SETS["f2"][0] == FEATURES
    assert FEATURES[: len(FEATURES_F1)] == FEATURES_F1
    assert len(FEATURES_F1) == 21  # v1 artifacts were trained on these


def test_results_older_than_a_year_are_ignored():
    assert f([T - 400 * DAY], [50.0], 150.0)["has_prev"] == 0.0


def test_sex_is_case_insensitive_and_unknown_sex_is_flagged():
    assert f([], [], 90.0, sex="f")["sex_f"] == 1.0
    x = f([], [], 90.0, sex="X")
    assert (x["sex_f"], x["has_sex"]) == (0.0, 0.0)


history = st.lists(
    st.tuples(st.integers(-400 * DAY, 400 * DAY), st.floats(1.0, 2000.0)),
    max_size=30,
).map(sorted)


@settings(max_examples=200, deadline=None)
@given(
    history,
    st.floats(1.0, 2000.0),
    st.none() | st.floats(0.0, 120.0),
    st.sampled_from([None, "M", "F", "m", "f"]),
)
def test_results_at_or_after_time_are_ignored(hist, value, age, sex):
    times = [T + d for d, _ in hist]
    values = [v for _, v in hist]
    before = [(t, v) for t, v in zip(times, values, strict=True) if t < T]
    got = features(times, values, T, value, age, sex)
    want = features([t for t, _ in before], [v for _, v in before], T, value, age, sex)
    assert got == want


@settings(max_examples=200, deadline=None)
@given(
    history,
    st.floats(1.0, 2000.0),
    st.none() | st.floats(0.0, 120.0),
    st.sampled_from([None, "M", "F"]),
)
def test_always_finite_and_consistent_with_nhs(hist, value, age, sex):
    times = [T - DAY + d // 2 for d, _ in hist]  # some before, some after T
    values = [v for _, v in hist]
    x = dict(zip(FEATURES, features(times, values, T, value, age, sex), strict=True))
    assert all(math.isfinite(v) for v in x.values())
    assert x["has_age"] == (age is not None) and x["has_sex"] == (sex is not None)
    nhs = nhs_stage(times, values, T, value)
    if nhs.ratio is not None:
        assert x["nhs_ratio"] == pytest.approx(nhs.ratio)
    else:
        assert x["has_prev"] == 0.0
    assert x["nhs_stage"] == nhs.stage  # f2: the reference's own verdict, exactly


@settings(max_examples=200, deadline=None)
@given(history, st.floats(1.0, 2000.0), st.none() | st.floats(0.0, 120.0))
def test_typed_arrays_give_the_same_features_and_stage_as_lists(hist, value, age):
    # The service holds its patients' results in typed arrays (store.rows.load_patient).
    times = [T - DAY + d // 2 for d, _ in hist]
    values = [v for _, v in hist]
    compact = array("q", times), array("d", values)
    assert features(*compact, T, value, age, "F") == features(times, values, T, value, age, "F")
    assert nhs_stage(*compact, T, value) == nhs_stage(times, values, T, value)


@settings(max_examples=200, deadline=None)
@given(history, st.floats(1.0, 2000.0), st.floats(0.0, 120.0), st.sampled_from(["M", "F"]))
def test_withholding_demographics_changes_only_the_demographic_features(hist, value, age, sex):
    """What train.Examples relies on to derive the no-admission vectors from the others."""
    from aki_alert.detect.features import DEMOGRAPHICS, UNKNOWN_DEMOGRAPHICS

    times = [T - DAY + d // 2 for d, _ in hist]
    values = [v for _, v in hist]
    known = features(times, values, T, value, age, sex)
    withheld = features(times, values, T, value, None, None)
    for i, name in enumerate(FEATURES):
        if name in DEMOGRAPHICS:
            assert withheld[i] == UNKNOWN_DEMOGRAPHICS[DEMOGRAPHICS.index(name)]
        else:
            assert withheld[i] == known[i], name
