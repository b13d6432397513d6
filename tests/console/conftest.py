"""Fixtures of the console tests: the small state of console_testkit, built on each backend
(SQLite, and PostgreSQL when a server answers), and a console serving it on 127.0.0.1."""

from __future__ import annotations

import os
import uuid

import pytest
from console_testkit import TOKEN, build_state

from aki_alert.console import start

BACKENDS = ("sqlite", "postgresql")
POSTGRES_ADMIN_URL = os.environ.get("AKI_TEST_POSTGRES_URL",
                                    "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="module")
def module_postgres_url():
    """tests/conftest.py's postgres_url for a whole module: the state is built once (~0.35 s)
    rather than for every test."""
    psycopg = pytest.importorskip("psycopg")
    name = f"aki_c_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL at {POSTGRES_ADMIN_URL}: {e}")
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(scope="module", params=BACKENDS)
def state(request, tmp_path_factory) -> dict:
    """console_testkit's state on one backend; "state" is its path or URL."""
    if request.param == "sqlite":
        where = str(tmp_path_factory.mktemp("console-state") / "state.db")
    else:
        where = request.getfixturevalue("module_postgres_url")
    return {**build_state(where), "state": where, "backend": request.param}


@pytest.fixture(params=BACKENDS)
def new_state(request, tmp_path) -> str:
    """Where a state not created yet lives, for one test: a file path that does not exist, or
    an empty database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="module")
def console(state):
    server = start("127.0.0.1", 0, TOKEN, state["state"])
    yield server
    server.shutdown()
