"""PostgreSQL only: the state's database session is killed under the running service, and then
the database refuses it for a while. (SQLite has no session to lose; its storage fault is the
disk filling up, tests/faults/test_disk_full.py.)"""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from aki_alert.timeutil import DAY
from integration.service_process import POSTGRES_ADMIN_URL, Backend, log_text

from .harness import assert_journal_complete, finish, outcome, query, reach

psycopg = pytest.importorskip("psycopg")
sql = psycopg.sql

pytestmark = pytest.mark.timeout(120)

KILLS = 8
OUTAGE = 2.0                  # seconds the database refuses the service's new sessions
STREAM_SECONDS = 12.0         # real time, sped up: stream left after the kills and the outage


@pytest.fixture
def backend():
    """A database owned by a role of its own, which the test can refuse (`ALTER ROLE NOLOGIN`:
    the superuser `postgres` cannot be refused); the service's open sessions stay up."""
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL at {POSTGRES_ADMIN_URL}: {e}")
    name = f"aki_t_{uuid.uuid4().hex[:12]}"
    role, db = sql.Identifier(name + "_r"), sql.Identifier(name)
    u = urlsplit(POSTGRES_ADMIN_URL)
    password = sql.SQL(" PASSWORD {}").format(u.password) if u.password else sql.SQL("")
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role) + password)
    try:
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, role))
        netloc = f"{name}_r" + (f":{u.password}" if u.password else "") + "@" + \
            u.netloc.rpartition("@")[2]
        yield Backend("postgresql", urlunsplit((u.scheme, netloc, "/" + name, u.query, "")))
    finally:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(db))
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
        admin.close()


def kill_sessions(admin, database: str) -> int:
    """pg_terminate_backend on the service's state sessions (application_name `aki-alert`;
    the lease's session and the test's are named otherwise); how many there were."""
    return admin.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = %s AND application_name = 'aki-alert'", (database,)).fetchone()[0]


def test_postgresql_session_killed_and_refused_stops_acks_loses_nothing(
        tmp_path, stream, harness, backend):
    """The hospital resumes after the last ACK, so a message ACKed while its commit failed would
    be missing from the journal (and from the score). Killed at 8 points of the stream, the
    service must reconnect by itself; refused for 2 s, it must ACK nothing, not exit, keep
    retrying, and go on by itself once the database lets it in again. A page delivered while
    the session was gone may be sent once more (its record was lost with the session)."""
    n = len(stream.messages)
    database = urlsplit(backend.url).path[1:]
    role = sql.Identifier(urlsplit(backend.url).username)
    state = harness.state(tmp_path / "state")
    admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    harness.cleanups.append(admin.close)
    h = harness.hospital(stream.messages, stream.rows, resume_state=tmp_path / "resume.json",
                         speed=40 * DAY / STREAM_SECONDS)
    # One replica: no takeover to hasten, so a lease long enough that a loaded machine's stall
    # of the renewing thread (1 s leases lapse after 0.75 s) is not taken for a lost lease.
    proc = harness.serve(h, state, stream.history, LEASE_SECONDS="5")
    # Kills spread over the first half of the stream; each point is reached only by a service
    # that reconnected after the previous kill.
    for k in range(KILLS):
        reach(h, proc, n * (k + 1) // (2 * KILLS + 2))
        assert kill_sessions(admin, database) == 1
    reach(h, proc, n * (KILLS + 1) // (2 * KILLS + 2))     # reconnected after the last kill
    admin.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
    try:
        assert kill_sessions(admin, database) == 1
        time.sleep(0.3)                 # an ACK already written when the session died arrives
        stuck_at, connections = h.hospital.next, h.hospital.connections
        time.sleep(OUTAGE)
        assert h.hospital.next == stuck_at, "the service ACKed while it could not commit"
        assert stuck_at < n, "the stream ended before the outage"
        assert proc.poll() is None, "the service exited:\n" + log_text(proc)[-3000:]
        assert h.hospital.connections > connections      # it keeps retrying the hospital
    finally:
        admin.execute(sql.SQL("ALTER ROLE {} LOGIN").format(role))
    finish(h, proc, state, timeout=60)
    code, _, log = harness.terminate(proc)
    live = h.score()
    assert code == 0, log[-3000:]
    assert "cannot store message, not acknowledging it" in log
    assert log.count("state database connection lost: reconnecting") >= KILLS + 1
    assert h.hospital.acked == n and h.hospital.nacked == 0
    assert_journal_complete(state, stream.messages)
    assert query(state, "SELECT count(*) FROM dead_letters") == 0
    assert query(state, "SELECT count(*) FROM outbox WHERE status != 'delivered'") == 0
    assert outcome(live) == outcome(stream.expected), live.summary()
    distinct = live.tp + live.fp
    assert distinct == len(set(stream.expected_pages))
    assert live.pages - distinct <= KILLS + 1, f"{live.pages - distinct} duplicate deliveries"
    print(f"\n{KILLS} sessions killed, then refused {OUTAGE:.0f}s at message {stuck_at} of {n}; "
          f"{h.hospital.connections} hospital connections; {live.summary()}")
