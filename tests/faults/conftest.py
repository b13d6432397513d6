"""Fixtures of the fault-injection suite: generated streams, their uninterrupted score, and a
harness that stops every hospital and service process it started, even when a test fails.
Every test that uses `harness` runs on both state backends."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `integration.service_process` starts the real `aki-alert serve`: make tests/ importable.
TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from .harness import Harness, make_stream  # noqa: E402


@pytest.fixture(scope="session")
def stream(tmp_path_factory):
    """About 4,700 messages, 49 AKIs: 40 days of 5,000 patients."""
    return make_stream(tmp_path_factory.mktemp("stream-a"), days=40, patients=5000, seed=11)


@pytest.fixture(scope="session")
def small_stream(tmp_path_factory):
    """About 1,400 messages: for replay-from-start runs, which resend the stream's head."""
    return make_stream(tmp_path_factory.mktemp("stream-small"), days=20, patients=3000, seed=5)


@pytest.fixture
def harness(backend):
    """On both backends (the `backend` fixture of tests/conftest.py): test ids end in
    [sqlite] or [postgresql]."""
    h = Harness(backend)
    try:
        yield h
    finally:
        h.close()
