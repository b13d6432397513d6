"""Which model serves a hospital (population.py): the default, or the shift-robust one when the
history's creatinine differs from the default's training population."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from aki_alert.detect.model import MODELS_DIR, load_model
from aki_alert.drift import CREATININE_BOUNDS, histogram
from aki_alert.population import MIN_RESULTS, SHIFT_PSI, CreatinineCounts, choose

DEFAULT, ROBUST = load_model(), load_model(MODELS_DIR / "v3-robust")


def counts_of(values) -> CreatinineCounts:
    c = CreatinineCounts()
    rows = [("1", i, v) for i, v in enumerate(values)]
    assert list(c.counted(rows)) == rows          # passed through untouched
    return c


def like_training(n: int, scale: float = 1.0, seed: int = 1) -> list[float]:
    """`n` values drawn from the default model's training histogram (uniform in each bin)."""
    rnd = random.Random(seed)
    fractions = DEFAULT.reference["creatinine"]["fractions"]
    edges = (20.0,) + CREATININE_BOUNDS + (1500.0,)
    bins = rnd.choices(range(len(fractions)), weights=fractions, k=n)
    return [scale * rnd.uniform(edges[b] + 1e-6, edges[b + 1]) for b in bins]


@given(st.lists(st.floats(1.0, 4999.0), max_size=200))
def test_counts_are_the_drift_histogram(values):
    c = counts_of(values)
    assert c.total == len(values)
    if values:
        assert [x / len(values) for x in c.counts] == histogram(values, CREATININE_BOUNDS)


def test_a_history_like_training_is_served_by_the_default():
    choice = choose(DEFAULT, ROBUST, counts_of(like_training(5000)))
    assert choice.detector is DEFAULT and choice.psi < 0.05
    assert "like the default model's training population" in choice.reason


def test_another_population_is_served_by_the_robust_model():
    choice = choose(DEFAULT, ROBUST, counts_of(like_training(5000, scale=1.4)))
    assert choice.detector is ROBUST and choice.psi > SHIFT_PSI
    assert f"serving the shift-robust model v3-robust instead of {DEFAULT.version}" in \
        choice.reason


def test_without_a_record_or_a_robust_model_or_enough_results_the_default_serves():
    shifted = counts_of(like_training(5000, scale=1.4))
    assert choose(DEFAULT, ROBUST, None).detector is DEFAULT
    no_robust = choose(DEFAULT, None, shifted)
    assert no_robust.detector is DEFAULT and "no robust model is set" in no_robust.reason
    few = choose(DEFAULT, ROBUST, counts_of(like_training(MIN_RESULTS - 1, scale=1.4)))
    assert few.detector is DEFAULT and few.psi is None and "too few" in few.reason


def test_the_record_round_trips_and_junk_is_no_record():
    c = counts_of([50.0, 130.0, 2000.0])
    assert CreatinineCounts.from_json(c.to_json()).counts == c.counts
    for junk in (None, "", "{", '{"counts": [1]}', '{"bounds": [1, 2], "counts": [1, 2, 3]}',
                 '{"bounds": ' + str(list(CREATININE_BOUNDS)) + ', "counts": ["x"]}'):
        assert CreatinineCounts.from_json(junk) is None


def test_served_for_another_population_creatinine_drift_is_measured_against_its_history():
    shifted = counts_of(like_training(5000, scale=1.4))
    switched = choose(DEFAULT, ROBUST, shifted)
    ref = switched.drift_reference()
    assert ref["creatinine"]["fractions"] == [c / shifted.total for c in shifted.counts]
    assert ref["score"] == ROBUST.reference["score"]
    assert ROBUST.reference["creatinine"]["fractions"] != ref["creatinine"]["fractions"]
    # Kept on the default (no robust model set): its training reference, so the alert speaks.
    kept = choose(DEFAULT, None, shifted)
    assert kept.shifted and kept.drift_reference() is DEFAULT.reference
    assert choose(DEFAULT, ROBUST, counts_of(like_training(5000))).drift_reference() is \
        DEFAULT.reference
