"""The durable state's backends: SQLite (a file in STATE_DIR, the default) or PostgreSQL.

`open_store(cfg.state_dir, cfg.state_url, cfg.durability)` picks one. psycopg is imported only
when a PostgreSQL URL is given, so a SQLite deployment does not need it installed.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from typing import TYPE_CHECKING, Union

from ..leader import LeadershipLost
from .admin import NewerSchemaError, StateError
from .sqlite import SqliteStore

if TYPE_CHECKING:
    from .postgres import PostgresStore

    Store = Union[SqliteStore, PostgresStore]
else:
    Store = SqliteStore

__all__ = ["open_store", "is_postgres_url", "is_storage_failure", "is_database_error", "Store",
           "StateError", "NewerSchemaError"]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(state_url: str | None) -> bool:
    return bool(state_url) and state_url.startswith(_POSTGRES_SCHEMES)


def open_store(state_dir: str, state_url: str | None, durability: str, *, migrate: bool = True,
               readonly: bool = False) -> Store:
    """PostgresStore for a `postgresql://…` (or `postgres://…`) URL, otherwise the SQLite file
    STATE_DIR/state.db. Raises StateError when the state cannot be opened. `migrate=False`
    leaves migrating to an explicit `store.migrate()`; `readonly` neither writes nor migrates
    (see the stores)."""
    if is_postgres_url(state_url):
        try:
            from .postgres import PostgresStore
        except ImportError as e:
            raise StateError(f"STATE_URL is a PostgreSQL URL but psycopg is not installed: {e}"
                             ) from e
        return PostgresStore(state_url, durability, migrate=migrate, readonly=readonly)
    if state_url:
        raise StateError("STATE_URL must be a postgresql:// URL (or unset for SQLite in "
                         "STATE_DIR)")
    return SqliteStore(os.path.join(state_dir, "state.db"), durability, migrate=migrate,
                       readonly=readonly)


def is_storage_failure(e: BaseException) -> bool:
    """Failures of our own storage (full, read-only, locked, corrupt, connection lost, or no
    longer ours to write: a replica's lost lease): never the message's fault. Integrity errors
    (and PostgreSQL data errors) are the message's."""
    if isinstance(e, LeadershipLost):
        return True
    if isinstance(e, sqlite3.IntegrityError):
        return False
    if isinstance(e, (sqlite3.DatabaseError, OSError)):
        return True
    if "psycopg" in sys.modules:          # only when a PostgresStore was opened
        from .postgres import is_storage_failure as postgres_failure
        return postgres_failure(e)
    return False


def is_database_error(e: BaseException) -> bool:
    """An error raised by either backend's driver (what the operator's commands report as one
    line rather than a traceback)."""
    if isinstance(e, sqlite3.Error):
        return True
    if "psycopg" in sys.modules:
        return isinstance(e, sys.modules["psycopg"].Error)
    return False
