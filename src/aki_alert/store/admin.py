"""What the two backends share beyond the per-message rows (rows.py): the schema version, its
migrations, and the whole-state access the operator's commands use (statecmd.py, replay.py).

Migrations. Each backend keeps its own v1 script (the column types differ); every later step is
the same SQL on both (`COMMON_MIGRATIONS`). Planning and applying them is written once here
(`StateAdmin.migrate`); a backend supplies how the version is recorded (SQLite: PRAGMA
user_version; PostgreSQL: the table `schema_version`) and the transaction that holds the state
while migrating (SQLite: BEGIN IMMEDIATE; PostgreSQL: BEGIN and an advisory lock). All pending
steps and the new version are one transaction: a failure leaves the state at its old version.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass

SCHEMA_VERSION = 3

# What each version does, as `aki-alert state migrate` reports it.
MIGRATION_NOTES = {
    1: "create the state's tables",
    2: "index outbox (result_time), read every minute by the quality monitor (pages_since)",
    3: "results get their HL7 status and comparator; result_revisions keeps every corrected, "
       "removed or merged-away value; merges records patient numbers merged into others",
}

# Steps after v1, the same SQL on both backends. The outbox gets a row per page decided, not
# per message, so this index costs the per-message path nothing.
COMMON_MIGRATIONS = {
    2: "CREATE INDEX outbox_result_time ON outbox (result_time)",
    # Status F and no comparator for every result before v3: the contract's feed sends neither.
    3: """
    ALTER TABLE results ADD COLUMN status TEXT NOT NULL DEFAULT 'F';
    ALTER TABLE results ADD COLUMN comparator TEXT;
    CREATE TABLE result_revisions (
        mrn TEXT NOT NULL,
        time BIGINT NOT NULL,
        value DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        comparator TEXT,
        action TEXT NOT NULL,
        new_mrn TEXT,
        changed_at DOUBLE PRECISION NOT NULL,
        journal_id BIGINT NOT NULL
    );
    CREATE INDEX result_revisions_mrn ON result_revisions (mrn, time);
    CREATE TABLE merges (
        old_mrn TEXT PRIMARY KEY,
        new_mrn TEXT NOT NULL,
        merged_at DOUBLE PRECISION NOT NULL,
        journal_id BIGINT NOT NULL
    )
    """,
}

# The tables holding a state's data, in an order that loads cleanly (backup and restore copy
# them between backends), and the schema version that added each after v1.
DATA_TABLES = ("meta", "patients", "admissions", "results", "journal", "outbox",
               "result_revisions", "merges")
_ADDED_IN = {"result_revisions": 3, "merges": 3}


def data_tables(version: int) -> tuple[str, ...]:
    """The data tables a state of schema `version` has."""
    return tuple(t for t in DATA_TABLES if _ADDED_IN.get(t, 1) <= version)


class StateError(Exception):
    """The state cannot be opened or is not one this version understands."""


class NewerSchemaError(StateError):
    """The state was written by a newer release: this one must not touch it."""


@dataclass(frozen=True, slots=True)
class Migration:
    current: int       # the version the state had
    target: int        # the version it has after the migration (or would, for a dry run)

    @property
    def steps(self) -> list[int]:
        return list(range(self.current + 1, self.target + 1))


def plan(current: int, where: str, target: int = SCHEMA_VERSION) -> Migration:
    """The steps from `current` to `target`; NewerSchemaError for a state newer than ours."""
    if current > SCHEMA_VERSION:
        raise NewerSchemaError(
            f"state {where} has schema version {current}, newer than this release's "
            f"{SCHEMA_VERSION}: run the newer release or restore a backup")
    return Migration(current, max(current, target))


class StateAdmin:
    """Mixed into a store: provides `migrate` and `query`. The store provides `db`, `_x`,
    `location`, `_MIGRATIONS`, `schema_version()`, `_set_schema_version(v)` and `_migrating()`."""

    db: object
    location: str
    _MIGRATIONS: dict[int, str]

    def _x(self, sql: str, params: tuple = ()):  # pragma: no cover - each backend has its own
        raise NotImplementedError

    def schema_version(self) -> int:  # pragma: no cover - each backend has its own
        raise NotImplementedError

    def _set_schema_version(self, version: int) -> None:  # pragma: no cover - ditto
        raise NotImplementedError

    def _migrating(self) -> AbstractContextManager:  # pragma: no cover - ditto
        raise NotImplementedError

    def query(self, sql: str, *params):
        """Run the shared `?`-placeholder SQL; returns a cursor (for the operator's commands)."""
        return self._x(sql, params)

    def migrate(self, dry_run: bool = False, target: int = SCHEMA_VERSION) -> Migration:
        """Apply the pending migrations up to `target` in one transaction (none for a dry run);
        returns what was (or would be) done. NewerSchemaError for a newer state."""
        with self._migrating():
            m = plan(self.schema_version(), self.location, target)
            if not dry_run:
                self._apply(m.steps)
        return m

    def _apply(self, versions: Iterable[int]) -> None:
        """Run migration scripts and record each version, inside the caller's transaction."""
        for v in versions:
            self._run_script(self._MIGRATIONS[v])
            self._set_schema_version(v)

    def _run_script(self, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                self.db.execute(statement)
