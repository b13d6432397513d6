"""The state's filesystem fills up while the service runs (SQLITE_FULL), then space is freed."""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from aki_alert.timeutil import DAY
from integration.service_process import log_text, wait_for

from .harness import assert_journal_complete, finish, outcome, query

pytestmark = pytest.mark.timeout(90)

FS_SIZE = "24m"


def mount_tmpfs(path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def fill(directory) -> int:
    """Write zeros until the filesystem is full; the bytes written."""
    written = 0
    chunk = b"\0" * (1 << 16)
    with open(directory / "filler", "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
    # A partial last block may remain: fill it too.
    with open(directory / "filler-tail", "wb", buffering=0) as f:
        for size in (4096, 512, 64, 1):
            while True:
                try:
                    written += f.write(b"\0" * size)
                except OSError:
                    break
    return written


def stalled(h, seconds: float) -> bool:
    """The hospital's position did not move for `seconds`."""
    before = h.hospital.next
    time.sleep(seconds)
    return h.hospital.next == before


# SQLite only: the fault is the SQLite file's filesystem filling up. PostgreSQL's equivalent
# (the state's database connection lost and refused) is tests/faults/test_state_connection.py.
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_disk_full_stops_acks_loses_nothing_and_recovers(tmp_path, stream, harness):
    """The state lives on a 24 MiB tmpfs. Once it is full the service must not ACK what it
    could not commit: the hospital (resume mode) would never send those messages again, so an
    ACK without a commit shows as a message missing from the journal and a changed score. It
    must not exit either (a crash loop), and once space is freed it must go on by itself."""
    state = harness.state(tmp_path / "state")
    if not mount_tmpfs(state.dir, FS_SIZE):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission): "
                    "no way to make SQLite see a full disk")
    harness.cleanups.append(lambda: subprocess.run(["umount", "-l", str(state.dir)],
                                                   capture_output=True, timeout=10))
    n = len(stream.messages)
    # Real time, sped up: the stream lasts ~8 s, so there is stream left when the disk fills.
    h = harness.hospital(stream.messages, stream.rows, resume_state=tmp_path / "resume.json",
                         speed=40 * DAY / 8.0)
    proc = harness.serve(h, state, stream.history)
    assert wait_for(lambda: h.hospital.next >= n // 5, 30), log_text(proc)[-3000:]
    filled_at = h.hospital.next
    fill(state.dir)
    # SQLite may still commit into WAL pages already allocated; then it needs a new page.
    assert wait_for(lambda: stalled(h, 1.5), 20), "the service kept ACKing on a full disk"
    stuck_at = h.hospital.next
    assert stuck_at < n, "the stream ended before the disk-full took effect"
    assert proc.poll() is None, "the service exited on a full disk:\n" + log_text(proc)[-3000:]
    # Which write meets the full disk first decides how the ACKs stop, both without loss:
    # the message log's (the front drops the connection, the hospital reconnects and is
    # refused again), or the state's (the front holds its ACKs while the service retries its
    # storage: backpressure, the connection stays open). Either way nothing more is acked.
    connections = h.hospital.connections
    reconnected = wait_for(lambda: h.hospital.connections > connections, 10)
    assert h.hospital.next == stuck_at
    log = log_text(proc)
    if reconnected:
        assert "cannot store message, not acknowledging it" in log, log[-3000:]
    else:
        assert "cannot commit the state" in log or "cannot apply" in log, log[-3000:]
    for name in ("filler", "filler-tail"):
        os.unlink(state.dir / name)
    finish(h, proc, state, timeout=60)
    code, _, log = harness.terminate(proc)
    live = h.score()
    assert code == 0, log[-3000:]
    assert h.hospital.acked == n and h.hospital.nacked == 0
    assert_journal_complete(state, stream.messages)
    assert query(state, "SELECT count(*) FROM dead_letters") == 0
    assert outcome(live) == outcome(stream.expected), live.summary()
    assert live.pages == len(set(stream.expected_pages))
    print(f"\nfilled at message {filled_at}, stalled at {stuck_at} of {n}; "
          f"{h.hospital.connections} connections, drops {dict(h.hospital.drops)}; "
          f"{live.summary()}")
