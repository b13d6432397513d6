"""kill -9 of the service at 20 random points of a stream (guarantees 1 and 2 of the design)."""

from __future__ import annotations

import random
import time

import pytest

from integration.service_process import log_text

from .harness import assert_journal_complete, finish, outcome, query, reach

pytestmark = pytest.mark.timeout(120)

KILLS = 20


def test_kill_9_at_20_random_points_loses_nothing_and_pages_once(tmp_path, stream, harness):
    """The hospital resumes after the last ACK (live mode), so a message ACKed but not
    committed would never be sent again: it would be missing from the journal and, if it held
    an AKI, from the score. A page decided but not committed, or committed but not resent after
    the crash, would be a false negative; a page resent after every restart would be counted
    here as a duplicate delivery (at most one per crash is allowed: the pager's 200 arriving
    between the delivery and its record)."""
    msgs, n = stream.messages, len(stream.messages)
    rng = random.Random(4)
    # Most kills at a stream position; every fourth (the first among them) at a random instant
    # after a (re)start, which can land in the start-up itself (the first history import,
    # the outbox resend, the connect).
    points = sorted(rng.sample(range(20, n - 20), KILLS))
    state = harness.state(tmp_path / "state")
    h = harness.hospital(msgs, stream.rows, resume_state=tmp_path / "resume.json")
    proc = harness.serve(h, state, stream.history)
    positions = []
    for k, point in enumerate(points):
        if k % 4 == 0:
            time.sleep(rng.uniform(0.0, 0.4))
            assert proc.poll() is None, log_text(proc)[-3000:]
        else:
            reach(h, proc, point)
        harness.kill9(proc)
        positions.append(h.hospital.next)
        proc = harness.serve(h, state, stream.history)
    finish(h, proc, state)
    code, _, log = harness.terminate(proc)
    live = h.score()
    assert code == 0, log[-3000:]
    assert h.hospital.acked == n          # resume mode: every message was ACKed once, ever
    assert h.hospital.nacked == 0
    # Nothing acknowledged was lost: the journal holds every distinct message.
    assert_journal_complete(state, msgs)
    assert query(state, "SELECT count(*) FROM journal WHERE status = 'dead'") == 0
    assert outcome(live) == outcome(stream.expected), live.summary()
    distinct = live.tp + live.fp
    assert distinct == len(set(stream.expected_pages))
    duplicates = live.pages - distinct
    assert duplicates <= KILLS, f"{duplicates} duplicate deliveries for {KILLS} crashes"
    assert query(state, "SELECT count(*) FROM outbox WHERE status != 'delivered'") == 0
    print(f"\nkilled at positions {positions}; {live.summary()}; "
          f"{live.pages} deliveries of {distinct} pages ({duplicates} duplicates)")
