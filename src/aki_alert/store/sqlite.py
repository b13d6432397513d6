"""Durable state in one SQLite file: patients, results, the message journal and the page outbox.

Every message is applied in one transaction (`transaction()`), so the journal row, the state
change and any page decision are committed together or not at all. WAL mode with
`synchronous=NORMAL` (durability "process") survives a crash of the process at any instant;
`synchronous=FULL` (durability "machine") also survives a power cut, at the cost of an fsync
per message.

Schema version: PRAGMA user_version; the migrations after v1 and the logic applying them are
shared with PostgreSQL (admin.py).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from .admin import COMMON_MIGRATIONS, SCHEMA_VERSION, StateAdmin, StateError
from .rows import RowOps

__all__ = ["SqliteStore", "StateError", "SCHEMA_VERSION"]

# SQLite copies the WAL back into the database file once it holds this many pages (4 KiB each),
# at the end of a commit. The default, 1,000, checkpointed every batch or two: each time the
# same pages of `results` and the journal were copied again. At 10,000 (a WAL of up to ~40 MB)
# the commit costs a message ~35 % less (docs/performance.md, round 4).
WAL_AUTOCHECKPOINT_PAGES = 10_000

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
    **COMMON_MIGRATIONS,
}


class SqliteStore(RowOps, StateAdmin):
    """`readonly`: a read-only connection that never creates the file and never migrates
    (safe beside the running service); `migrate=False`: writable, migrated only by an explicit
    `migrate()` (`aki-alert state migrate`)."""

    _MIGRATIONS = _MIGRATIONS

    def __init__(self, path: str, durability: str = "process", *, migrate: bool = True,
                 readonly: bool = False) -> None:
        self.path = self.location = path
        self.durability = durability
        self._savepoint = _Savepoint(self)
        try:
            if readonly:
                self.db = sqlite3.connect(Path(path).absolute().as_uri() + "?mode=ro", uri=True,
                                          isolation_level=None, check_same_thread=False)
            else:
                self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                self.db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as e:
            raise StateError(f"cannot open state database {path}: {e}") from e
        self.db.execute("PRAGMA synchronous=" + ("FULL" if durability == "machine" else "NORMAL"))
        self.db.execute("PRAGMA foreign_keys=OFF")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        if migrate and not readonly:
            self.migrate()

    # --- schema (admin.py plans and applies the migrations) -------------------------------
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _set_schema_version(self, version: int) -> None:
        self.db.execute(f"PRAGMA user_version={int(version)}")

    @contextmanager
    def _migrating(self) -> Iterator[None]:
        try:
            with self.transaction():
                yield
        except sqlite3.Error as e:
            raise StateError(f"cannot migrate state {self.path}: {e}") from e

    # --- the whole state (statecmd.py) ----------------------------------------------------
    def tables(self) -> set[str]:
        """Names of the tables, views and indexes."""
        return {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}

    def integrity(self) -> list[str]:
        """SQLite's integrity_check: one line per problem, [] when the file is sound."""
        rows = [r[0] for r in self.db.execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else rows

    def storage(self) -> dict:
        """Where the state is and how big, and the archives beside it (`state status`)."""
        wal = self.path + "-wal"
        return {
            "backend": "sqlite",
            "path": self.path,
            "size_bytes": os.path.getsize(self.path),
            "wal_bytes": os.path.getsize(wal) if os.path.exists(wal) else 0,
            "archives": sorted(f.name for f in
                               Path(self.path).parent.glob(Path(self.path).name + ".archived-*")),
        }

    def columns(self, table: str) -> list[str]:
        return [r[1] for r in self.db.execute(f'PRAGMA table_info("{table}")')]

    def read_table(self, table: str, columns: list[str]) -> Iterator[tuple]:
        names = ", ".join(f'"{c}"' for c in columns)
        return iter(self.db.execute(f'SELECT {names} FROM "{table}"'))

    def write_table(self, table: str, columns: list[str], rows: Iterable[tuple]) -> None:
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" * len(columns))
        self.db.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', rows)

    def backup_to(self, path: str) -> None:
        """Copy the state into a new file at `path` with SQLite's backup API: one committed
        snapshot (safe while the service writes)."""
        dst = sqlite3.connect(path)
        try:
            self.db.backup(dst)
        finally:
            dst.close()

    def _x(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, params)

    def _insert_id(self, sql: str, params: tuple) -> int | None:
        # Not RETURNING: SQLite materialises its result, which took longer than the insert
        # itself (docs/performance.md); rowcount and lastrowid say the same.
        cur = self.db.execute(sql, params)
        return cur.lastrowid if cur.rowcount == 1 else None

    def close(self) -> None:
        self.db.close()

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction

    def transaction(self, isolated: bool = True) -> AbstractContextManager[None]:
        """One unit of change: its own transaction, or, inside a batch, a savepoint of it (so
        a failing message rolls back alone and the batch goes on). `isolated=False`: inside a
        batch, no savepoint (two statements fewer a message); a failure then leaves the unit
        half-written, and the caller must roll the whole batch back (durable.py does)."""
        if self.db.in_transaction:
            return self._savepoint if isolated else _NOT_ISOLATED
        return self._own_transaction()

    @contextmanager
    def _own_transaction(self) -> Iterator[None]:
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


_NOT_ISOLATED = nullcontext()


class _Savepoint:
    """A savepoint of the open batch (one message, isolated). A class rather than a generator
    context manager: ~1.5 µs less each (docs/performance.md)."""

    __slots__ = ("store",)

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        self.store.db.execute("SAVEPOINT unit")

    def __exit__(self, exc_type, exc, tb) -> bool:
        db = self.store.db
        if exc_type is None:
            db.execute("RELEASE unit")
        elif db.in_transaction:               # SQLite may have rolled back all (disk full)
            db.execute("ROLLBACK TO unit")
            db.execute("RELEASE unit")
        return False
