"""The re-page policy (repage.py) and the offline decisions that apply it (offline.decide)."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aki_alert import repage
from aki_alert.detect import Judgement
from aki_alert.offline import Positive, Withdrawal, decide
from aki_alert.repage import NEVER, PagedResult, Policy, load_policies, should_repage
from aki_alert.timeutil import DAY, HOUR, format_hl7_time

T0 = 1000 * DAY
# Re-pages for anything worse (every trigger at its loosest): what the invariants must survive.
ANY = Policy(min_hours=0.0, stage_gain=1, value_ratio=1.0, nadir_rise=1.0, score_gain=0.0)


def judged(score, stage, positive=True, detector="model"):
    return Judgement(positive, score, 0.5, detector, "v", stage, None, None)


def test_shipped_parameters_load_for_both_detectors():
    policies = load_policies()
    assert set(policies) == {"model", "nhs"}
    assert repage.policy_for("no-such-detector") == NEVER
    doc = json.loads(repage.PARAMS_PATH.read_text())
    assert doc["tuning"]["command"] == "python -m benchmarks.bench_repage --tune"


def test_never_policy_never_repages():
    paged = PagedResult(T0, 0.55, 1)
    assert not NEVER.enabled
    assert not should_repage(NEVER, paged, T0 + DAY, 500.0, judged(1.0, 3), [T0], [100.0])


def test_a_much_worse_result_repages_and_the_gates_hold():
    paged = PagedResult(T0, 0.55, 1)
    times, values = [T0 - 30 * DAY, T0], [80.0, 130.0]
    p = Policy(min_hours=12.0, stage_gain=2)
    assert should_repage(p, paged, T0 + DAY, 400.0, judged(1.0, 3), times, values)
    assert not should_repage(p, paged, T0 + 11 * HOUR, 400.0, judged(1.0, 3), times, values)
    assert not should_repage(p, paged, T0 + DAY, 200.0, judged(0.9, 2), times, values)
    gated = Policy(min_score=0.99, stage_gain=2)
    assert not should_repage(gated, paged, T0 + DAY, 400.0, judged(0.98, 3), times, values)


def test_each_trigger_on_its_own():
    paged = PagedResult(T0, 0.55, 1)
    times = [T0 - 30 * DAY, T0, T0 + 5 * DAY]
    values = [80.0, 130.0, 70.0]              # paged 130, then back down to 70
    new = T0 + 20 * DAY
    assert should_repage(Policy(score_gain=0.4), paged, new, 120.0, judged(0.96, 1),
                         times, values)
    assert not should_repage(Policy(score_gain=0.5), paged, new, 120.0, judged(0.96, 1),
                             times, values)
    assert should_repage(Policy(value_ratio=1.5), paged, new, 200.0, judged(0.6, 1),
                         times, values)
    assert not should_repage(Policy(value_ratio=1.5), paged, new, 190.0, judged(0.6, 1),
                             times, values)
    # A new rise from a new baseline: 70 → 140 though below the paged 130 × 1.5.
    assert should_repage(Policy(nadir_rise=2.0), paged, new, 140.0, judged(0.6, 1),
                         times, values)
    assert not should_repage(Policy(nadir_rise=2.0), paged, new, 139.0, judged(0.6, 1),
                             times, values)


def test_explanation_round_trip():
    j = judged(0.123456789, 2)
    expl = json.dumps({"detector": "model", "score": round(j.score, 6), "stage": 2})
    assert PagedResult.from_explanation(T0, expl) == PagedResult.of(T0, j)
    assert PagedResult.from_explanation(T0, "not json") is None
    assert PagedResult.from_explanation(T0, json.dumps({"stage": 1})) is None
    assert PagedResult.from_explanation(T0, json.dumps({"score": 1, "stage": "x"})) is None


def test_unknown_parameters_are_refused():
    with pytest.raises(ValueError, match="unknown"):
        Policy.from_dict({"min_hours": 1, "stage_bump": 2})


series = st.lists(st.tuples(st.integers(1, 200), st.floats(20.0, 1500.0)), min_size=0,
                  max_size=8)


@settings(max_examples=300, deadline=None)
@given(series, st.floats(20.0, 1500.0), st.floats(0.0, 1.0), st.integers(0, 3),
       st.integers(-100, 200), st.floats(20.0, 1500.0), st.floats(0.0, 1.0), st.integers(0, 3))
def test_never_repages_for_a_result_no_worse_or_not_later(
        earlier, paged_value, paged_score, paged_stage, dt_hours, value, score, stage):
    """Not later than the paged result, or no worse in stage, score and value: never."""
    times = sorted({T0 - h * HOUR for h, _ in earlier} | {T0})
    vals = {T0 - h * HOUR: v for h, v in earlier}
    vals[T0] = paged_value
    values = [vals[t] for t in times]
    paged = PagedResult(T0, paged_score, paged_stage)
    t = T0 + dt_hours * HOUR
    decided = should_repage(ANY, paged, t, value, judged(score, stage), times, values)
    if t <= T0 or (stage <= paged_stage and score <= paged_score and value <= paged_value):
        assert not decided
    if decided:
        assert t > T0


def positive(mrn, t, value, score, stage, times=(), values=()):
    return Positive(mrn, t, format_hl7_time(t), value, judged(score, stage), list(times),
                    list(values))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2000), st.floats(50.0, 900.0), st.floats(0.5, 1.0),
                          st.integers(0, 3)), max_size=12))
def test_decide_never_pages_the_same_time_twice_and_once_more_per_worsening(results):
    """Whatever the positives (repeats of a sample time included): distinct bodies, and within
    an episode every page after the first is later than, and worse than, the page before."""
    results.sort(key=lambda r: r[0])
    events, times, values = [], [], []
    for h, v, s, st_ in results:
        t = T0 + h * HOUR
        events.append(positive("7", t, v, s, st_, times, values))
        if not times or times[-1] != t:
            times, values = times + [t], values + [v]
    pages = decide(events, ANY)
    assert len(pages) == len(set(pages))
    stamps = [b.split(",")[1] for b in pages]
    assert stamps == sorted(set(stamps))
    assert len(decide(events, NEVER)) <= len(pages)


def test_a_repage_moves_the_episode_and_the_next_must_beat_it():
    p = Policy(stage_gain=1)
    events = [positive("7", T0, 150.0, 0.6, 1, [T0 - 40 * DAY], [100.0]),
              positive("7", T0 + DAY, 220.0, 0.9, 2, [T0 - 40 * DAY, T0], [100.0, 150.0]),
              positive("7", T0 + 2 * DAY, 230.0, 0.9, 2,
                       [T0 - 40 * DAY, T0, T0 + DAY], [100.0, 150.0, 220.0]),
              positive("7", T0 + 3 * DAY, 400.0, 1.0, 3,
                       [T0 - 40 * DAY, T0, T0 + DAY, T0 + 2 * DAY],
                       [100.0, 150.0, 220.0, 230.0])]
    assert decide(events, NEVER) == [f"7,{format_hl7_time(T0)}"]
    assert decide(events, p) == [f"7,{format_hl7_time(t)}" for t in (T0, T0 + DAY, T0 + 3 * DAY)]


def test_a_withdrawn_repage_falls_back_to_the_episodes_first_page():
    p = Policy(stage_gain=1)
    hist = ([T0 - 40 * DAY], [100.0])
    events = [positive("7", T0, 150.0, 0.6, 1, *hist),
              positive("7", T0 + DAY, 300.0, 1.0, 3, [T0 - 40 * DAY, T0], [100.0, 150.0]),
              Withdrawal("7", T0 + DAY, frozenset({T0 - 40 * DAY, T0})),
              # Still inside the first page's episode, and no worse than it: not paged.
              positive("7", T0 + 2 * DAY, 150.0, 0.6, 1, [T0 - 40 * DAY, T0], [100.0, 150.0])]
    assert decide(events, p) == [f"7,{format_hl7_time(T0)}", f"7,{format_hl7_time(T0 + DAY)}"]
    # Without an earlier page standing, the episode ends with its withdrawn page.
    gone = [events[0], Withdrawal("7", T0, frozenset({T0 - 40 * DAY})), events[3]]
    assert decide(gone, p) == [f"7,{format_hl7_time(T0)}", f"7,{format_hl7_time(T0 + 2 * DAY)}"]
