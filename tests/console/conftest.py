"""Fixtures of the console tests: the small state of console_testkit, built on each backend
(SQLite, and PostgreSQL when a server answers), and a console serving it on 127.0.0.1."""

from __future__ import annotations

import pytest
from console_testkit import TOKEN, build_clinical_state, build_state

from aki_alert.console import start

BACKENDS = ("sqlite", "postgresql")


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


@pytest.fixture(scope="module")
def clinical_postgres_url():
    """A database of its own for the module (`module_postgres_url` holds `state`'s)."""
    from integration.service_process import fresh_database

    yield from fresh_database("aki_c")


@pytest.fixture(scope="module", params=BACKENDS)
def clinical(request, tmp_path_factory) -> dict:
    """console_testkit's pages of each NHS rule and delivery fate, on one backend (a state of
    its own, not `state`'s)."""
    if request.param == "sqlite":
        where = str(tmp_path_factory.mktemp("console-clinical") / "state.db")
    else:
        where = request.getfixturevalue("clinical_postgres_url")
    return {**build_clinical_state(where), "state": where, "backend": request.param}


@pytest.fixture(scope="module")
def clinical_console(clinical):
    server = start("127.0.0.1", 0, TOKEN, clinical["state"])
    yield server
    server.shutdown()
