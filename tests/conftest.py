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
