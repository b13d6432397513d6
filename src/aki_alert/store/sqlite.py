"""Durable state in one SQLite file: patients, results, the message journal and the page outbox.

Every message is applied in one transaction (`transaction()`), so the journal row, the state
change and any page decision are committed together or not at all. WAL mode with
`synchronous=NORMAL` (durability "process") survives a crash of the process at any instant;
`synchronous=FULL` (durability "machine") also survives a power cut, at the cost of an fsync
per message.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from .rows import RowOps

SCHEMA_VERSION = 1

_MIGRATIONS = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE patients (
        mrn TEXT PRIMARY KEY,
        name TEXT,
        birth INTEGER,
        sex TEXT,
        admitted INTEGER NOT NULL DEFAULT 0,
        episode_start INTEGER          -- time of the result that opened the current AKI episode
    );
    CREATE TABLE admissions (
        id INTEGER PRIMARY KEY,
        mrn TEXT NOT NULL,
        event TEXT NOT NULL,           -- 'admit' or 'discharge'
        time INTEGER,
        journal_id INTEGER NOT NULL
    );
    CREATE INDEX admissions_mrn ON admissions (mrn, time);
    CREATE TABLE results (
        mrn TEXT NOT NULL,
        time INTEGER NOT NULL,
        value REAL NOT NULL,
        source TEXT NOT NULL,          -- 'history' or 'feed'
        PRIMARY KEY (mrn, time)
    ) WITHOUT ROWID;
    CREATE TABLE journal (
        id INTEGER PRIMARY KEY,
        digest BLOB NOT NULL UNIQUE,   -- blake2b of the message bytes: a re-delivery is a no-op
        received_at REAL NOT NULL,
        kind TEXT NOT NULL,
        mrn TEXT,
        status TEXT NOT NULL,          -- applied | duplicate-result | ignored | dead
        reason TEXT,
        raw BLOB NOT NULL
    );
    CREATE VIEW dead_letters AS
        SELECT id, received_at, kind, reason, raw FROM journal WHERE status = 'dead';
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        mrn TEXT NOT NULL,
        result_time INTEGER NOT NULL,
        body TEXT NOT NULL UNIQUE,     -- 'MRN,YYYYMMDDHHMMSS' as sent to the pager
        created_at REAL NOT NULL,
        status TEXT NOT NULL,          -- pending | delivered | dead | suppressed (replayed)
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        delivered_at REAL,
        explanation TEXT NOT NULL,     -- JSON: detector, version, score, threshold, NHS view
        journal_id INTEGER NOT NULL
    );
    CREATE INDEX outbox_pending ON outbox (status) WHERE status = 'pending';
    """,
}


class StateError(Exception):
    """The state cannot be opened or is not one this version understands."""


class SqliteStore(RowOps):
    def __init__(self, path: str, durability: str = "process") -> None:
        self.path = path
        self.durability = durability
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as e:
            raise StateError(f"cannot open state database {path}: {e}") from e
        self.db.execute("PRAGMA synchronous=" + ("FULL" if durability == "machine" else "NORMAL"))
        self.db.execute("PRAGMA foreign_keys=OFF")
        self.db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state {self.path} has schema version {version}, newer than this release's "
                f"{SCHEMA_VERSION}: run the newer release or restore a backup"
            )
        for v in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                self._run_script(_MIGRATIONS[v])
                self.db.execute(f"PRAGMA user_version={v}")

    def _run_script(self, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                self.db.execute(statement)

    def _x(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, params)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One unit of change: its own transaction, or, inside a batch, a savepoint of it (so
        a failing message rolls back alone and the batch goes on)."""
        if self.db.in_transaction:
            self.db.execute("SAVEPOINT unit")
            try:
                yield
            except BaseException:
                if self.db.in_transaction:   # SQLite may have rolled back all (disk full)
                    self.db.execute("ROLLBACK TO unit")
                    self.db.execute("RELEASE unit")
                raise
            self.db.execute("RELEASE unit")
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.db.in_transaction:   # SQLite may already have rolled back (e.g. disk full)
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # A batch: one long transaction holding many messages (see durable.py).
    def begin_batch(self) -> None:
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")

    def commit_batch(self) -> None:
        if self.db.in_transaction:
            self.db.execute("COMMIT")

    def rollback_batch(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    # --- history ------------------------------------------------------------------------
    def import_results(self, rows: Iterable[tuple[str, int, float]]) -> int:
        """Insert (mrn, time, value) history rows, keeping existing ones; returns rows added.

        One transaction: an exception (or a crash) while `rows` is consumed leaves the state as
        it was. `rows` is streamed straight into executemany, so memory stays flat whatever
        the file's size. Measured and not kept (docs/performance.md): Python-side batches,
        sorting rows by MRN per batch, a larger page cache, and a sorted temporary table (a
        little faster, but hundreds of MB of temporary files on the pod's 64 MiB /tmp).
        """
        sql = "INSERT OR IGNORE INTO results (mrn, time, value, source) VALUES (?, ?, ?, 'history')"
        with self.transaction():
            before = self.db.total_changes
            self.db.executemany(sql, rows)
            return self.db.total_changes - before

    def history_overlap(self, rows: Iterable[tuple[str, int, float]]) -> tuple[int, int, int]:
        """(history results in the state, shared with `rows`, conflicting with `rows`)."""
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (mrn TEXT, time INTEGER, "
                        "value REAL, PRIMARY KEY (mrn, time)) WITHOUT ROWID")
        self.db.execute("DELETE FROM incoming")
        with self.transaction():
            self.db.executemany("INSERT OR IGNORE INTO incoming VALUES (?, ?, ?)", rows)
        state_rows, shared, conflicts = self.db.execute(
            "SELECT count(*), count(i.mrn) FILTER (WHERE abs(i.value - r.value) < 1e-6), "
            "count(i.mrn) FILTER (WHERE abs(i.value - r.value) >= 1e-6) "
            "FROM results r LEFT JOIN incoming i ON i.mrn = r.mrn AND i.time = r.time "
            "WHERE r.source = 'history'").fetchone()
        self.db.execute("DROP TABLE incoming")
        return state_rows, shared, conflicts

    def archive(self, suffix: str) -> str:
        """Move the state file aside as `state.db.<suffix>` and start an empty one in its place."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()
        archived, n = f"{self.path}.{suffix}", 1
        while os.path.exists(archived):       # never overwrite an earlier archive
            n += 1
            archived = f"{self.path}.{suffix}-{n}"
        os.replace(self.path, archived)
        for ext in ("-wal", "-shm"):
            if os.path.exists(self.path + ext):
                os.remove(self.path + ext)
        self.__init__(self.path, self.durability)
        return archived
