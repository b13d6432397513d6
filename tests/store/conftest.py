"""The `store` fixture: every contract test runs once against SQLite and once against
PostgreSQL (a fresh database per test, dropped afterwards; skipped when no server answers).

PostgreSQL is looked for at AKI_TEST_POSTGRES_URL (a postgresql:// URL; default
postgresql://postgres@127.0.0.1:5432/postgres, as in CI); its user needs CREATEDB.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from urllib.parse import urlsplit, urlunsplit
from collections.abc import Iterator

import pytest

from aki_alert.store.sqlite import SqliteStore

ADMIN_URL = os.environ.get("AKI_TEST_POSTGRES_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
_unreachable: list[str] = []    # the reason, once the server was found not to answer


class Backend:
    """Opens stores on one test's state (several times: to reopen after a 'crash')."""

    name = ""

    def __init__(self) -> None:
        self.opened: list = []

    def open(self, durability: str = "process"):
        store = self._open(durability)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for s in self.opened:
            try:
                s.close()
            except Exception:  # noqa: BLE001 - already closed
                pass

    def rows(self, store, query: str) -> list[tuple]:
        """Run a parameterless query on the store's own connection (what tests inspect)."""
        return [tuple(r) for r in store.db.execute(query).fetchall()]

    def committed(self, query: str) -> list[tuple]:
        """Run a query on a separate connection: what has been committed."""
        raise NotImplementedError

    def set_schema_version(self, version: int) -> None:
        raise NotImplementedError

    def archived_rows(self, archived: str, table: str) -> int:
        raise NotImplementedError


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, tmp_path) -> None:
        super().__init__()
        self.path = str(tmp_path / "state.db")

    def _open(self, durability):
        return SqliteStore(self.path, durability)

    def committed(self, query):
        db = sqlite3.connect(self.path)
        try:
            return db.execute(query).fetchall()
        finally:
            db.close()

    def set_schema_version(self, version):
        db = sqlite3.connect(self.path)
        try:
            db.execute(f"PRAGMA user_version={version}")
        finally:
            db.close()

    def archived_rows(self, archived, table):
        db = sqlite3.connect(archived)
        try:
            return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            db.close()


class PostgresBackend(Backend):
    name = "postgres"

    def __init__(self, psycopg) -> None:
        super().__init__()
        self.psycopg = psycopg
        self.dbname = f"aki_test_{uuid.uuid4().hex[:12]}"
        self.admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
        self.admin.execute(f"CREATE DATABASE {self.dbname}")
        self.url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{self.dbname}"))

    def _open(self, durability):
        from aki_alert.store.postgres import PostgresStore
        return PostgresStore(self.url, durability)

    def committed(self, query):
        with self.psycopg.connect(self.url, autocommit=True) as db:
            return [tuple(r) for r in db.execute(query).fetchall()]

    def set_schema_version(self, version):
        with self.psycopg.connect(self.url, autocommit=True) as db:
            db.execute("UPDATE schema_version SET version = %s", (version,))

    def archived_rows(self, archived, table):
        with self.psycopg.connect(self.url, autocommit=True) as db:
            return db.execute(f'SELECT count(*) FROM "{archived}".{table}').fetchone()[0]

    def terminate(self, store) -> None:
        """Cut the store's connection from the server side (a server restart, a network cut)."""
        self.admin.execute("SELECT pg_terminate_backend(%s)", (store.db.info.backend_pid,))

    def drop(self) -> None:
        try:
            self.admin.execute(f"DROP DATABASE IF EXISTS {self.dbname} WITH (FORCE)")
        finally:
            self.admin.close()


def _postgres_backend() -> PostgresBackend:
    psycopg = pytest.importorskip("psycopg", reason="psycopg not installed")
    if _unreachable:
        pytest.skip(_unreachable[0])
    try:
        return PostgresBackend(psycopg)
    except psycopg.OperationalError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _unreachable.append(f"PostgreSQL not reachable at {ADMIN_URL}: {first}")
        pytest.skip(_unreachable[0])


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path) -> Iterator[Backend]:
    if request.param == "sqlite":
        b: Backend = SqliteBackend(tmp_path)
        yield b
        b.close_all()
        return
    b = _postgres_backend()
    try:
        yield b
    finally:
        b.close_all()
        b.drop()


@pytest.fixture
def store(backend):
    return backend.open()
