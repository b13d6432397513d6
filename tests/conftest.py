"""Shared test fixtures: where the hospital's data lives (skip cleanly when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "dev-stream" / "messages.mllp").exists():
        pytest.skip(f"hospital data not present at {SHARED_DATA}")
    return SHARED_DATA


POSTGRES_ADMIN_URL = __import__("os").environ.get(
    "AKI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database for one test, dropped after it (skips without a server)."""
    import uuid

    psycopg = pytest.importorskip("psycopg")
    name = f"aki_t_{uuid.uuid4().hex[:12]}"
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
