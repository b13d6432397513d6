"""`aki-alert console` and `spawn`: either backend's state, given as a path or a URL, and never
on a command line (a PostgreSQL URL may hold a password)."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest
from console_testkit import TOKEN, request

from aki_alert import config
from aki_alert.cli import main
from aki_alert.console.process import READY, STATE_ENV, spawn


def test_spawn_serves_the_state_and_keeps_it_off_the_command_line(state):
    child, url = spawn("127.0.0.1", 0, TOKEN, state["state"], 0)
    try:
        cmdline = Path(f"/proc/{child.pid}/cmdline").read_bytes().decode()
        assert state["state"] not in cmdline and TOKEN not in cmdline
        r = request(SimpleNamespace(port=int(url.rsplit(":", 1)[1])), "/patients/7")
        assert r.status == 200 and "O&#x27;BRIEN" in r.text          # patient 7, from the state
    finally:
        child.terminate()
        child.wait(5)


def test_the_command_takes_the_state_as_a_flag_or_from_the_environment(state, monkeypatch,
                                                                         capsys):
    monkeypatch.setenv("CONSOLE_TOKEN", TOKEN)
    monkeypatch.delenv(STATE_ENV, raising=False)
    # --parent-pid of a process that is not our parent: it serves, then stops at once.
    once = ["console", "--port", "0", "--parent-pid", "1"]
    assert main([*once, "--state", state["state"]]) == 0
    assert capsys.readouterr().out.startswith(READY)
    assert main(once) == 2
    assert f"give --state or {STATE_ENV}" in capsys.readouterr().err
    monkeypatch.setenv(STATE_ENV, state["state"])
    assert main(once) == 0


def test_the_refresh_interval_goes_from_the_setting_to_the_pages(state):
    env = {"MLLP_ADDRESS": "h:1", "PAGER_ADDRESS": "h:2"}
    assert config.load(argparse.Namespace(), environ=env).console_refresh == 30
    assert config.load(argparse.Namespace(), environ={**env, "CONSOLE_REFRESH": "0"}) \
        .console_refresh == 0
    for bad in ("-1", "abc", "3601", "1.5"):
        with pytest.raises(config.ConfigError, match="CONSOLE_REFRESH"):
            config.load(argparse.Namespace(), environ={**env, "CONSOLE_REFRESH": bad})
    child, url = spawn("127.0.0.1", 0, TOKEN, state["state"], 0, refresh=45)
    try:
        r = request(SimpleNamespace(port=int(url.rsplit(":", 1)[1])), "/")
        assert '<meta http-equiv="refresh" content="45">' in r.text
    finally:
        child.terminate()
        child.wait(5)
