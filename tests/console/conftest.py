"""Fixtures of the console tests: the small state of console_testkit and a console serving it
on 127.0.0.1."""

from __future__ import annotations

import pytest
from console_testkit import TOKEN, build_state

from aki_alert.console import start


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("console-state") / "state.db")
    info = build_state(path)
    info["path"] = path
    return info


@pytest.fixture(scope="module")
def console(state):
    server = start("127.0.0.1", 0, TOKEN, state["path"])
    yield server
    server.shutdown()
