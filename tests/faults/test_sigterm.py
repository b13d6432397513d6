"""SIGTERM while the hospital streams as fast as it is acknowledged (the shipped model)."""

from __future__ import annotations

import random

import pytest

from aki_alert.offline import served_model
from aki_alert.hospital.pager_server import PagerFaults

from .harness import assert_journal_complete, finish, outcome, reach

pytestmark = pytest.mark.timeout(120)

STOPS = 3


def test_sigterm_in_a_burst_exits_0_within_5s_and_loses_nothing(tmp_path, stream, harness):
    """Three SIGTERMs at random points of a fast stream, with some pages hanging in the pager
    (so deliveries are in flight when the signal comes). A service that stopped mid-message
    without finishing it, or ACKed before committing, would lose a message (resume mode: the
    journal would miss it); one that waited on hung pages would miss the 5 s; one that dropped
    in-flight pages at exit would leave a false negative; one that did not record its
    deliveries would page twice after the restart."""
    expected_pages, expected = stream.expect(served_model(str(stream.history)))
    n = len(stream.messages)
    rng = random.Random(17)
    points = sorted(rng.sample(range(n // 10, n - n // 10), STOPS))
    state = harness.state(tmp_path / "state")
    h = harness.hospital(stream.messages, stream.rows, resume_state=tmp_path / "resume.json",
                         pager_faults=PagerFaults(hang_rate=0.15, hang_seconds=60.0, seed=5))
    env = {"DETECTOR": "model"}
    proc = harness.serve(h, state, stream.history, **env)
    exits = []
    for point in points:
        reach(h, proc, point)
        code, seconds, log = harness.terminate(proc)
        exits.append((h.hospital.next, round(seconds, 2)))
        assert code == 0, log[-3000:]
        assert seconds < 5.0, f"exit took {seconds:.2f}s"
        assert "shut down cleanly" in log
        proc = harness.serve(h, state, stream.history, **env)
    finish(h, proc, state, timeout=60)
    code, seconds, log = harness.terminate(proc)
    live = h.score()
    assert code == 0 and seconds < 5.0, log[-3000:]
    assert h.hospital.acked == n and h.hospital.nacked == 0
    assert_journal_complete(state, stream.messages)
    assert outcome(live) == outcome(expected), live.summary()
    distinct = live.tp + live.fp
    assert distinct == len(set(expected_pages))
    assert live.pages == distinct, f"{live.pages - distinct} page(s) delivered twice"
    assert h.hospital.pager.responses.get(0, 0) > 0       # some pages did hang
    print(f"\nSIGTERM at (position, seconds to exit) {exits}; model: {live.summary()}")
