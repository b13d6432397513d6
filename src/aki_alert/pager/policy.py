"""When to try a page again, when to hedge, how long to wait, and when to stop: pure logic.

No I/O and no clock of its own: every function takes the time (`now`, seconds of a monotonic
clock) and the random source it needs, so that the dispatcher (`pager/__init__.py`) does the
I/O and these rules are tested alone (tests/unit/test_pager_policy.py).

- **Backoff** after a failed attempt stays short (`BACKOFF_FIRST` doubling to `BACKOFF_CAP`,
  jittered to 50–100 %) while the pager accepts anything at all: a pager that fails half its
  requests is asked again within a quarter of a second, not after the 10 s a long exponential
  backoff reaches.
- **Attempt timeouts** are short (`ATTEMPT_TIMEOUT`) and double, per page, after each attempt
  of that page that timed out (to `ATTEMPT_TIMEOUT_CAP`): a pager that is merely slow still gets
  a long enough wait, a hung request does not hold a page for long.
- **Hedging**: while an attempt has had no answer for `hedge_delay` (a multiple of the pager's
  recent answer times, clamped), a second one of the same page is sent beside it; the first
  answer wins and the other is abandoned. The hospital counts a repeated identical body once.
- **The circuit** opens when the pager has accepted nothing for `OPEN_AFTER` seconds over at
  least `OPEN_FAILURES` failed attempts (timeouts, refusals and 5xx alike): then pages wait,
  and one of them at a time is sent as a probe, every `PROBE_FIRST` doubling to `PROBE_CAP`
  seconds (a probe does not wait for the one before it: a probe lost in a hung pager does not
  delay the next). The first accepted page closes the circuit and every waiting page is sent.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

BACKOFF_FIRST = 0.02
BACKOFF_CAP = 0.25
ATTEMPT_TIMEOUT = 1.0
ATTEMPT_TIMEOUT_CAP = 8.0
HEDGE_MIN = 0.05
HEDGE_MAX = 0.5
HEDGE_FACTOR = 3.0              # × the p90 of the pager's recent answer times
HEDGE_WINDOW = 64               # answers remembered for that p90
MAX_PARALLEL = 2                # attempts of one page in flight at once (itself and a hedge)
CONCURRENCY = 64                # attempts of all pages in flight at once
OPEN_AFTER = 1.0
OPEN_FAILURES = 3
PROBE_FIRST = 0.1
PROBE_CAP = 1.0


@dataclass(frozen=True, slots=True)
class Policy:
    """Every tunable of the delivery policy (tests pass small ones; the service, the defaults)."""

    backoff_first: float = BACKOFF_FIRST
    backoff_cap: float = BACKOFF_CAP
    attempt_timeout: float = ATTEMPT_TIMEOUT
    attempt_timeout_cap: float = ATTEMPT_TIMEOUT_CAP
    hedge_min: float = HEDGE_MIN
    hedge_max: float = HEDGE_MAX
    hedge_factor: float = HEDGE_FACTOR
    hedge_window: int = HEDGE_WINDOW
    max_parallel: int = MAX_PARALLEL
    concurrency: int = CONCURRENCY
    open_after: float = OPEN_AFTER
    open_failures: int = OPEN_FAILURES
    probe_first: float = PROBE_FIRST
    probe_cap: float = PROBE_CAP


def backoff(failures: int, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP,
            rng: random.Random | None = None) -> float:
    """Wait before the next attempt after `failures` (≥ 1) failed ones in a row:
    `first` · 2^(failures − 1), capped at `cap`, jittered to 50–100 %."""
    base = cap if failures > 64 else min(cap, first * 2 ** (failures - 1))
    return base * (rng or random).uniform(0.5, 1.0)


def attempt_timeout(timeouts: int, first: float = ATTEMPT_TIMEOUT,
                    cap: float = ATTEMPT_TIMEOUT_CAP) -> float:
    """How long an attempt may wait for an answer, after `timeouts` attempts (of this page, or
    probes in a row) that had none: `first` doubled per timeout, capped."""
    return cap if timeouts > 64 else min(cap, first * 2 ** timeouts)


def quantile(values: Iterable[float], q: float) -> float | None:
    """The q-quantile (0..1, nearest rank, rounding up) of `values`; None when empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class AnswerTimes:
    """The pager's most recent answer times (any HTTP answer: a 500 shows how fast it
    answers too), and the hedge delay they imply."""

    def __init__(self, policy: Policy = Policy()) -> None:
        self.policy = policy
        self._times: deque[float] = deque(maxlen=policy.hedge_window)

    def add(self, seconds: float) -> None:
        self._times.append(seconds)

    def hedge_delay(self) -> float:
        """`hedge_factor` × the p90 answer time, within [hedge_min, hedge_max]; hedge_max
        before any answer."""
        p = self.policy
        p90 = quantile(self._times, 0.9)
        if p90 is None:
            return p.hedge_max
        return min(p.hedge_max, max(p.hedge_min, p.hedge_factor * p90))


CLOSED, OPEN = "closed", "open"


class Circuit:
    """Closed: every page is sent. Open: pages wait, and `take_probe` lets one through every
    probe interval (`probe_first` doubling to `probe_cap`). Any accepted page closes it."""

    def __init__(self, policy: Policy = Policy()) -> None:
        self.policy = policy
        self.state = CLOSED
        self.failures = 0                     # failed attempts since the last success
        self.failing_since: float | None = None   # time of the first of them
        self.next_probe = 0.0
        self.probe_interval = policy.probe_first
        self.failed_probes = 0                # in a row, since the circuit opened
        self.opened = 0                       # times it opened (for the metric)

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def success(self, now: float) -> bool:
        """An attempt was accepted. True when that closed the circuit."""
        was_open = self.state == OPEN
        self.state = CLOSED
        self.failures = 0
        self.failing_since = None
        self.failed_probes = 0
        self.probe_interval = self.policy.probe_first
        return was_open

    def failure(self, now: float, probe: bool = False) -> bool:
        """An attempt failed (no answer, a refusal, a 5xx). True when that opened the circuit.
        A failure of an attempt sent before the circuit opened changes nothing once open."""
        p = self.policy
        if self.state == OPEN:
            if probe:
                self.failed_probes += 1
            return False
        if self.failing_since is None:
            self.failing_since = now
        self.failures += 1
        if self.failures >= p.open_failures and now - self.failing_since >= p.open_after:
            self.state = OPEN
            self.opened += 1
            self.probe_interval = p.probe_first
            self.next_probe = now + p.probe_first
            self.failed_probes = 0
            return True
        return False

    def take_probe(self, now: float) -> bool:
        """Open, and the next probe is due: True, and the one after is scheduled."""
        if self.state != OPEN or now < self.next_probe:
            return False
        self.probe_interval = min(self.policy.probe_cap, self.probe_interval * 2)
        self.next_probe = now + self.probe_interval
        return True

    def probe_timeout(self) -> float:
        return attempt_timeout(self.failed_probes, self.policy.attempt_timeout,
                               self.policy.attempt_timeout_cap)


@dataclass(slots=True)
class Schedule:
    """When one page may start its next attempt, from what it has in flight.

    `retry_at`: the end of the backoff after its latest failure (0: none). An attempt may
    start when fewer than `max_parallel` are in flight and: none is in flight and the backoff
    is over (a retry), or the newest in flight has waited `hedge` without an answer and hedging
    is allowed (the circuit is closed) (a hedge)."""

    max_parallel: int = MAX_PARALLEL
    retry_at: float = 0.0

    def next_start(self, started: list[float], queued: int, hedge: float,
                   hedging: bool) -> float | None:
        """The earliest time the next attempt may start, given the start times of the attempts
        in flight that have a connection, and how many more wait for one; None: not until
        one of them ends (or gets its connection)."""
        if queued:
            return None
        if not started:
            return self.retry_at
        if not hedging or len(started) >= self.max_parallel:
            return None
        return max(self.retry_at, max(started) + hedge)
