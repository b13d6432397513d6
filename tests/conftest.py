"""Shared test fixtures: where the hospital's data lives (skip cleanly when absent), a fresh
PostgreSQL database per test, and `backend`: the state's two backends for process-level tests."""

from __future__ import annotations

from pathlib import Path

import pytest

# tests/ is on sys.path (this file's directory): the helpers of the process-level tests.
from integration.service_process import Backend, fresh_database

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "dev-stream" / "messages.mllp").exists():
        pytest.skip(f"hospital data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database for one test, dropped after it (skips without a server)."""
    yield from fresh_database("aki_t")


@pytest.fixture(scope="module")
def module_postgres_url():
    """The same for a whole module (a state built once, not for every test)."""
    yield from fresh_database("aki_m")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    """The state's backend for a test that runs `aki-alert serve` (test ids end in [sqlite] or
    [postgresql]): `backend.env` is the service's extra environment (none for SQLite;
    STATE_URL of a fresh database and a short LEASE_SECONDS for PostgreSQL), and
    `backend.state(dir)` a `State` to pass to `start()` and to read back."""
    if request.param == "sqlite":
        yield Backend("sqlite")
        return
    url = request.getfixturevalue("postgres_url")
    yield Backend("postgresql", url)
    if not getattr(request.node, "aki_call_passed", False):      # failed or skipped: said so
        return
    # A PostgreSQL half that never reached its database would pass while testing SQLite again.
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as c:
        used = c.execute("SELECT to_regclass('journal') IS NOT NULL").fetchone()[0]
    if not used:
        pytest.fail(f"{request.node.nodeid}: the service never opened its PostgreSQL state "
                    "(pass backend.state(dir) to start() / harness.state())")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember whether a test's call passed (the `backend` fixture checks only those)."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.aki_call_passed = report.passed
