"""The stale-state recovery as an operator runs it, each step a separate `python -m aki_alert`:
confirm with `state status`, back up, reset, let the service import its history, `replay` the
day's messages, validate, check. On both backends: the commands find the state through the
environment, as in the pod (STATE_DIR, and STATE_URL for PostgreSQL)."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from aki_alert.hospital import messages
from aki_alert import config
from aki_alert.hospital.datafiles import write_history, write_messages
from aki_alert.startup import open_state, reconcile
from aki_alert.timeutil import DAY, HOUR, format_hl7_time, parse_hl7_date, parse_hl7_time

T0 = parse_hl7_time("20240301080000")
NOW = T0 + 2 * DAY


def result(mrn, t, value):
    return messages.result(t, str(mrn), value)


def admit(mrn, t):
    return messages.admission(t, str(mrn), "ANN SMITH", parse_hl7_date("19600101"), "F")


def aki(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "aki_alert", *argv], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.fixture(params=["sqlite", "postgres"])
def state(request, tmp_path):
    """The state's settings: SQLite in STATE_DIR, or PostgreSQL at STATE_URL."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    return {"STATE_DIR": str(tmp_path / "state"), "STATE_URL": url}


def start_service(state, history, environment):
    """What `serve` does at start before connecting: open the state, reconcile, import."""
    cfg = config.load(argparse.Namespace(), {
        "MLLP_ADDRESS": "hospital:8440", "PAGER_ADDRESS": "hospital:8441",
        "HISTORY_PATH": str(history), **state, "DETECTOR": "nhs",
        "AKI_ENVIRONMENT": environment, "ON_HISTORY_CHANGE": "refuse"})
    store = open_state(cfg)
    try:
        return reconcile(store, cfg)
    finally:
        store.close()


def test_stale_state_recovery(tmp_path, state):
    # The incident: a state built for another hospital (its own history, no patient 7).
    old_history = tmp_path / "old-history.csv"
    write_history(old_history, {"555": [(T0 - 40 * DAY, 70.0)]})
    assert start_service(state, old_history, "old-hospital")

    # 1. Confirm: the state says which environment and history it was built from.
    p = aki("state", "status", "--json", env=state)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["provenance"]["environment"] == "old-hospital"
    assert s["provenance"]["history_path"] == str(old_history)

    # 2. Back up, 3. reset (the service is stopped).
    p = aki("state", "backup", "--out", str(tmp_path / "before.db"), env=state)
    assert p.returncode == 0 and "integrity ok" in p.stdout
    p = aki("state", "reset", "--yes", env=state)
    assert p.returncode == 0, p.stderr

    # 4. The service starts on the right environment and imports this hospital's history.
    history = tmp_path / "history.csv"
    write_history(history, {"7": [(T0 - 30 * DAY, 80.0), (T0 - 20 * DAY, 84.0)]})
    assert start_service(state, history, "ward-test")

    # 5. The day's PAS and LIMS messages, as exported: one per line, a junk line at the end.
    day = [admit(7, T0 - HOUR), result(7, T0, 200.0), result(9, NOW - HOUR, 60.0),
           admit(9, NOW - 2 * HOUR)]
    path = tmp_path / "day.txt"
    path.write_bytes(b"\n".join(m.rstrip(b"\r") for m in day) + b"\n#exported by PAS\n")
    args = ["replay", str(path), "--detector", "nhs", "--environment", "ward-test",
            "--now", format_hl7_time(NOW)]
    p = aki(*args, env=state)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "added             4 (2 admission, 2 result)" in out
    assert "rejected          1 (dead letters)\n  line 5: message does not start" in out
    # patient 7's baseline (median 82) is only in the history file: the AKI is found; sampled
    # 48 h before NOW it is reported, not paged
    assert f"suppressed 7,{format_hl7_time(T0)}  stage 2, ratio 2.44, sampled 48.0 h" in out
    assert out.rstrip().endswith("validation: all 5 messages present")

    # 6. Re-running is harmless; 7. the state is consistent.
    p = aki(*args, env=state)
    assert p.returncode == 0 and "added             0\n" in p.stdout
    assert "skipped           5" in p.stdout
    p = aki("state", "check", env=state)
    assert p.returncode == 0, p.stdout
    s = json.loads(aki("state", "status", "--json", env=state).stdout)
    assert s["provenance"]["environment"] == "ward-test"
    assert s["counts"]["pages"] == {"suppressed": 1}
    assert s["counts"]["results"] == {"history": 2, "feed": 2}

    # The backup still holds the other hospital's state, and replay refuses to mix them.
    p = aki("replay", str(path), "--detector", "nhs",
            env={**state, "AKI_ENVIRONMENT": "old-hospital"})
    assert p.returncode == 2 and "belongs to environment 'ward-test'" in p.stderr


def test_replay_of_an_mllp_file_with_page_missed_and_validate_only(tmp_path, state):
    history = tmp_path / "history.csv"
    write_history(history, {"7": [(T0 - 30 * DAY, 80.0)]})
    assert start_service(state, history, "ward-test")
    mllp = tmp_path / "day.mllp"
    write_messages(mllp, [result(7, T0, 200.0), admit(7, T0 - HOUR)])
    p = aki("replay", str(mllp), "--detector", "nhs", "--page-missed",
            "--now", format_hl7_time(NOW), "--json", env=state)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["added"] == {"admission": 1, "result": 1}
    assert [(d["page"], d["status"]) for d in r["decisions"]] == [
        (f"7,{format_hl7_time(T0)}", "pending")]
    p = aki("replay", str(mllp), "--validate-only", env=state)
    assert p.returncode == 0 and p.stdout == "validation: all 2 messages present\n"
