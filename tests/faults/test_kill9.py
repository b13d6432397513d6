"""kill -9 of the service at 20 random points of a stream (guarantees 1 and 2 of the design),
and of its front process at 10."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from aki_alert.hospital import messages
from aki_alert.timeutil import DAY, parse_hl7_time
from integration.service_process import log_text, wait_for

from .harness import assert_journal_complete, finish, outcome, query, reach

pytestmark = pytest.mark.timeout(120)

KILLS = 20
T0 = parse_hl7_time("20240301080000")
FRONT_KILLS = 10


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


def front_pid(proc) -> int | None:
    """The service's front process (its child), if it has one now."""
    for task in os.listdir(f"/proc/{proc.pid}/task"):
        with open(f"/proc/{proc.pid}/task/{task}/children") as f:
            found = f.read().split()
        if found:
            return int(found[0])
    return None


# SQLite only: with STATE_URL there is no front (each message is committed before its ACK).
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_kill_9_of_the_front_at_10_points_loses_nothing_and_pages_nothing_twice(
        tmp_path, stream, harness):
    """The front acknowledges a frame before the service applies it, and may be killed after
    the ACK and before handing it over: the service must apply everything the front logged,
    start it again, and go on. The service itself lives on, so no page is sent twice."""
    msgs, n = stream.messages, len(stream.messages)
    points = sorted(random.Random(9).sample(range(20, n - 20), FRONT_KILLS))
    state = harness.state(tmp_path / "state")
    h = harness.hospital(msgs, stream.rows, resume_state=tmp_path / "resume.json")
    proc = harness.serve(h, state, stream.history)
    killed = []
    for point in points:
        reach(h, proc, point)
        front = front_pid(proc)
        assert front is not None and front not in killed, log_text(proc)[-3000:]
        os.kill(front, signal.SIGKILL)
        killed.append(front)
    finish(h, proc, state)
    code, _, log = harness.terminate(proc)
    live = h.score()
    assert code == 0, log[-3000:]
    assert log.count("the front process exited unexpectedly") == FRONT_KILLS
    assert h.hospital.acked == n
    assert_journal_complete(state, msgs)
    assert outcome(live) == outcome(stream.expected), live.summary()
    assert live.pages == live.tp + live.fp == len(set(stream.expected_pages))


def blocked_writing_to_stdout(pid: int) -> bool:
    """The process is blocked in write(1, …) (Linux x86-64's syscall numbers)."""
    with open(f"/proc/{pid}/syscall") as f:
        return f.read().startswith("1 0x1 ")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="write(2) is syscall 1 on x86-64")
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_frame_is_acknowledged_only_once_handed_over_and_a_front_killed_between_loses_none(
        tmp_path, harness):
    """Deterministically, the window the random kills above rarely hit: the service is paused
    (SIGSTOP), so the front, having logged a frame larger than the pipe holds (an AKI), is stuck
    handing it over. It must not have acknowledged it yet; killed there, the frame reaches the
    service from the message log or from the hospital's resend, and is paged once."""
    history = tmp_path / "history.csv"
    history.write_text("mrn,creatinine_date_0,creatinine_result_0\n999,2024-01-01 08:00:00,80\n")
    big = messages.result(T0 + DAY, "7", 300.0) + b"NTE|1||" + b"x" * 200_000 + b"\r"
    h = harness.hospital([messages.result(T0, "7", 100.0), big], [], speed=DAY / 2,
                         resume_state=tmp_path / "resume.json")     # live: resent if not ACKed
    state = harness.state(tmp_path / "state")
    proc = harness.serve(h, state, history)
    reach(h, proc, 1)
    assert wait_for(lambda: query(state, "SELECT count(*) FROM journal") == 1, 10)
    front = front_pid(proc)
    proc.send_signal(signal.SIGSTOP)
    try:
        assert wait_for(lambda: blocked_writing_to_stdout(front), 10)
        time.sleep(0.2)
        assert h.hospital.acked == 1, "acknowledged before it was handed over"
        os.kill(front, signal.SIGKILL)
    finally:
        proc.send_signal(signal.SIGCONT)
    assert wait_for(lambda: h.hospital.acked == 2, 10), log_text(proc)[-3000:]
    assert wait_for(lambda: query(state, "SELECT count(*) FROM outbox WHERE status = "
                                         "'delivered'") == 1, 10), log_text(proc)[-3000:]
    code, _, log = harness.terminate(proc)
    assert code == 0, log[-3000:]
    assert "the front process exited unexpectedly" in log
    assert query(state, "SELECT count(*) FROM journal") == 2
    assert query(state, "SELECT body FROM outbox") == "7,20240302080000"
    assert h.score().pages == 1                                         # sent once
