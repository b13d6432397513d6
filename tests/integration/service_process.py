"""Start and stop the real `aki-alert serve` process for end-to-end tests, on either backend of
its state, and read that state back (`Backend`, `State`)."""

from __future__ import annotations

import glob
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from aki_alert.hospital.process import terminate
from aki_alert.store import Store, open_store

# The server tests create their databases on (and drop them from); trust auth, or a password
# in the URL.
POSTGRES_ADMIN_URL = os.environ.get("AKI_TEST_POSTGRES_URL",
                                    "postgresql://postgres@127.0.0.1:5432/postgres")
# With STATE_URL the service takes a leader lease; a restart after `kill -9` waits until the
# dead process's lease lapses (at most LEASE_SECONDS), so the shorter the quicker.
TEST_LEASE_SECONDS = "1"


def fresh_database(prefix: str):
    """Create a PostgreSQL database, yield its URL, drop it (skips without a server)."""
    import uuid

    psycopg = pytest.importorskip("psycopg")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        conn = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL at {POSTGRES_ADMIN_URL}: {e}")
    conn.execute(f"CREATE DATABASE {name}")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.close()


@dataclass(frozen=True)
class Backend:
    """Where `aki-alert serve` keeps its state in a test: "sqlite" (STATE_DIR/state.db, the
    default) or "postgresql" (`url`: a fresh database of the test, passed as STATE_URL)."""

    name: str
    url: str | None = None
    lease_seconds: str = TEST_LEASE_SECONDS

    @property
    def env(self) -> dict[str, str]:
        """The service's extra environment for this backend."""
        if self.url is None:
            return {}
        return {"STATE_URL": self.url, "LEASE_SECONDS": self.lease_seconds}

    def state(self, directory) -> State:
        return State(Path(directory), self)


SQLITE = Backend("sqlite")


@dataclass(frozen=True)
class State:
    """One service's state: STATE_DIR (always: messages.log lives there) and its backend."""

    dir: Path
    backend: Backend = SQLITE

    @property
    def url(self) -> str | None:
        return self.backend.url

    def rows(self, sql: str, *args) -> list[tuple]:
        """Rows of a read-only query in the stores' shared dialect (`?` placeholders), safe
        while the service runs: SQLite opened read-only (WAL), or a read-only PostgreSQL
        session of its own, named `aki-test` (the service's is `aki-alert`)."""
        params = args
        if self.url is None:
            db = sqlite3.connect(f"file:{self.dir / 'state.db'}?mode=ro", uri=True, timeout=5)
        else:
            import psycopg

            db = psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                 application_name="aki-test")
            db.execute("SET default_transaction_read_only = on")
            sql, params = sql.replace("?", "%s"), args or None   # no `%` parsing without args
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def value(self, sql: str, *args):
        """The first column of the first row of `rows(sql, *args)`."""
        return self.rows(sql, *args)[0][0]

    @contextmanager
    def store(self) -> Iterator[Store]:
        """The state opened as the service opens it (`open_store`), closed afterwards."""
        store = open_store(str(self.dir), self.url, "process")
        try:
            yield store
        finally:
            store.close()

    def archives(self) -> list[str]:
        """The archives `--on-history-change rebuild` made: files beside SQLite's state.db,
        schemas in PostgreSQL."""
        if self.url is None:
            return sorted(glob.glob(str(self.dir / "state.db.archived-*")))
        return sorted(r[0] for r in self.rows(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, ?)", "archived_"))


def start(mllp_port: int, pager_port: int, state: State | Path | str, history,
          **extra: str) -> subprocess.Popen:
    """The service on `state` (a `State`, or a directory for SQLite), its log going to a file
    (a pipe nobody reads would fill and block it)."""
    if not isinstance(state, State):
        state = SQLITE.state(state)
    env = dict(os.environ)
    env.update({
        "MLLP_ADDRESS": f"127.0.0.1:{mllp_port}",
        "PAGER_ADDRESS": f"127.0.0.1:{pager_port}",
        "STATE_DIR": str(state.dir),
        "HISTORY_PATH": str(history),
        "METRICS_PORT": "0",
        "DETECTOR": "nhs",
        "LOG_LEVEL": "INFO",
    })
    env.update(state.backend.env)
    env.update(extra)
    log = tempfile.NamedTemporaryFile("w+", prefix="aki-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "aki_alert", "serve"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log_path = log.name
    log.close()
    return proc


def leader_pid(url: str) -> int | None:
    """The process id of the replica holding the leader lease of the state at `url`, if any
    holds a lease that has not lapsed."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute("SELECT holder, expires_at > extract(epoch from clock_timestamp()) "
                        "FROM leader_lease WHERE id = 1").fetchone()
    return int(row[0].split(":")[1]) if row and row[0] and row[1] else None


def one_leads(url: str, procs) -> bool:
    """One of the replicas `procs` leads and every other one has said it stands by. A replica
    started after a kill may lead at once: the lease can lapse before the standby asks again."""
    pid = leader_pid(url)
    return any(p.pid == pid for p in procs) and \
        all("standby" in log_text(p) for p in procs if p.pid != pid)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> tuple[int, str]:
    """SIGTERM, wait; returns (exit code, stderr)."""
    return terminate(proc, timeout), log_text(proc)


def log_text(proc: subprocess.Popen) -> str:
    with open(proc.log_path) as f:
        return f.read()


def wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
