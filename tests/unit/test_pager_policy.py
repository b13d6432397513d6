"""The delivery policy alone (pager/policy.py): backoff, attempt timeouts, hedge timing and the
circuit's state machine, with the time passed in."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from aki_alert.pager.policy import (
    AnswerTimes,
    Circuit,
    Policy,
    Schedule,
    attempt_timeout,
    backoff,
    quantile,
)

P = Policy()


@given(st.integers(1, 10_000), st.integers(0, 2**32))
def test_backoff_stays_within_half_to_all_of_its_capped_base(failures, seed):
    d = backoff(failures, rng=random.Random(seed))
    base = min(P.backoff_cap, P.backoff_first * 2 ** min(failures - 1, 64))
    assert base / 2 <= d <= base <= P.backoff_cap


def test_backoff_stays_short_while_the_pager_answers():
    # However many failures in a row, a page is tried again within a quarter of a second.
    assert max(backoff(n, rng=random.Random(n)) for n in range(1, 200)) <= 0.25
    assert backoff(1, rng=random.Random(0)) <= 0.02


@given(st.integers(0, 10_000))
def test_attempt_timeouts_double_per_timeout_and_are_capped(timeouts):
    t = attempt_timeout(timeouts)
    assert P.attempt_timeout <= t <= P.attempt_timeout_cap
    assert attempt_timeout(timeouts + 1) >= t
    if timeouts < 3:
        assert t == P.attempt_timeout * 2 ** timeouts


@given(st.lists(st.floats(0, 100, allow_nan=False), max_size=200))
def test_the_hedge_delay_is_clamped_and_follows_the_answer_times(times):
    a = AnswerTimes()
    for t in times:
        a.add(t)
    d = a.hedge_delay()
    assert P.hedge_min <= d <= P.hedge_max
    recent = times[-P.hedge_window:]
    if not recent:
        assert d == P.hedge_max
    else:
        p90 = quantile(recent, 0.9)
        assert d == min(P.hedge_max, max(P.hedge_min, P.hedge_factor * p90))


def test_a_fast_pager_is_hedged_soon_and_a_slow_one_late():
    fast, slow = AnswerTimes(), AnswerTimes()
    for _ in range(50):
        fast.add(0.001)
        slow.add(0.200)
    assert fast.hedge_delay() == P.hedge_min
    assert slow.hedge_delay() == P.hedge_max


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1), st.floats(0, 1))
def test_quantile_is_one_of_the_values_and_monotonic_in_q(values, q):
    v = quantile(values, q)
    assert v in values
    assert quantile(values, 0.0) == min(values) and quantile(values, 1.0) == max(values)
    assert quantile(values, q / 2) <= v


def test_the_circuit_opens_only_after_failures_over_open_after_seconds():
    c = Circuit()
    assert not c.failure(0.0) and not c.failure(0.5)
    assert not c.failure(0.99)                     # three failures, but within a second
    assert c.closed
    assert c.failure(1.0)                          # a second without a success: open
    assert not c.closed and c.opened == 1


def test_a_success_resets_the_failure_streak():
    c = Circuit()
    for t in (0.0, 0.4, 0.8):
        c.failure(t)
    c.success(0.9)
    for t in (1.0, 1.5):
        assert not c.failure(t)
    assert c.closed                                # 1.0 → 1.5 is not a second


def test_an_open_circuit_lets_one_probe_through_per_interval_growing_to_the_cap():
    c = Circuit()
    for t in (0.0, 0.5, 1.0):
        c.failure(t)
    assert not c.closed
    assert not c.take_probe(1.05)                  # not due yet (probe_first = 0.1)
    probes, t = [], 1.0
    while t < 20.0:
        if c.take_probe(t):
            probes.append(t)
            c.failure(t, probe=True)
        t = round(t + 0.01, 2)
    gaps = [b - a for a, b in zip(probes, probes[1:], strict=False)]
    assert probes[0] == 1.1
    assert all(g <= P.probe_cap + 0.011 for g in gaps)
    assert gaps[-1] >= P.probe_cap - 0.011         # backed off to one a second
    assert len(probes) < 25                        # not hammering: ~1 a second
    assert c.probe_timeout() == P.attempt_timeout_cap


def test_a_success_closes_the_circuit_and_resets_probing():
    c = Circuit()
    for t in (0.0, 0.5, 1.0):
        c.failure(t)
    assert c.take_probe(1.1)
    c.failure(1.2, probe=True)
    assert c.success(1.3) is True and c.closed
    assert c.failed_probes == 0 and c.probe_timeout() == P.attempt_timeout
    assert c.success(1.4) is False                 # already closed


def test_late_failures_of_attempts_sent_before_the_circuit_opened_change_nothing():
    c = Circuit()
    for t in (0.0, 0.5, 1.0):
        c.failure(t)
    next_probe = c.next_probe
    assert not c.failure(1.05) and not c.failure(1.06)
    assert c.next_probe == next_probe and c.failed_probes == 0


events = st.lists(st.tuples(st.sampled_from(["ok", "fail", "probe"]), st.floats(0, 5)),
                  max_size=200)


@given(events)
def test_circuit_invariants(steps):
    """Whatever happens: success always leaves it closed; it only opens after open_failures
    failures spanning open_after seconds; probes are never closer than probe_first apart and
    never further than probe_cap; an open circuit gives at most one probe per due time."""
    c, now, last_probe = Circuit(), 0.0, None
    for kind, dt in steps:
        now += dt
        was_closed = c.closed
        if kind == "ok":
            c.success(now)
            assert c.closed
            last_probe = None
        elif kind == "fail":
            opened = c.failure(now)
            if opened:
                assert was_closed and c.failures >= P.open_failures
                assert now - c.failing_since >= P.open_after
        else:
            if c.take_probe(now):
                assert not c.closed
                assert not c.take_probe(now)               # one per due time
                assert P.probe_first <= c.next_probe - now <= P.probe_cap
                if last_probe is not None:
                    assert now - last_probe >= P.probe_first
                last_probe = now
                c.failure(now, probe=True)
        if c.closed:
            assert not c.take_probe(now)


@given(st.lists(st.floats(0, 100), max_size=3), st.integers(0, 2), st.floats(0, 1),
       st.booleans(), st.floats(0, 100))
def test_the_schedule_never_exceeds_max_parallel_and_respects_backoff(started, queued, hedge,
                                                                      hedging, retry_at):
    s = Schedule(max_parallel=2, retry_at=retry_at)
    at = s.next_start(started, queued, hedge, hedging)
    if queued or len(started) >= 2 or (started and not hedging):
        assert at is None
    elif not started:
        assert at == retry_at
    else:
        assert at >= retry_at and at >= max(started) + hedge
