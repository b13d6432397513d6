"""Start-up's reconcile: a first start skips the provenance scan that cannot find anything, and
decides as it did with the scan; a long import reports its progress."""

from __future__ import annotations

import argparse
import logging

import pytest

from aki_alert import config, history, startup
from aki_alert.history import ImportSummary, read_history
from aki_alert.hl7 import DEFAULT_PROFILE
from aki_alert.provenance import Overlap
from aki_alert.store.sqlite import SqliteStore

T0 = 1_700_000_000
HEADER = "mrn,creatinine_date_0,creatinine_result_0,creatinine_date_1,creatinine_result_1\n"
GOOD = (HEADER + "RVJ1001,2024-01-01 10:00:00,90,2024-01-02 10:00:00,95\n"
        "7,2024-01-01 11:00:00,70,,\n")


def cfg(tmp_path, history_path, environment="ward-7", policy="auto"):
    return config.load(argparse.Namespace(), {
        "MLLP_ADDRESS": "hospital:8440", "PAGER_ADDRESS": "hospital:8441",
        "HISTORY_PATH": str(history_path), "STATE_DIR": str(tmp_path / "state"),
        "DETECTOR": "nhs", "AKI_ENVIRONMENT": environment, "ON_HISTORY_CHANGE": policy})


def scanned(store, path) -> Overlap | None:
    """The overlap as reconcile computed it before: always by scanning the file."""
    try:
        return Overlap(*store.history_overlap(read_history(path, ImportSummary())))
    except (ValueError, UnicodeError):
        return None


@pytest.mark.parametrize("state", ["empty", "feed only", "history"])
@pytest.mark.parametrize("text", [GOOD, HEADER, "1,2024-01-01 10:00:00,90\n", ""])
def test_the_overlap_is_what_the_scan_found(tmp_path, state, text):
    store = SqliteStore(str(tmp_path / "state.db"))
    if state == "feed only":
        with store.transaction():
            store.add_result("7", T0, 120.0)
    elif state == "history":
        store.import_results([("7", T0, 70.0), ("8", T0, 80.0)])
    path = tmp_path / "history.csv"
    path.write_text(text)
    assert startup._overlap(store, str(path), DEFAULT_PROFILE) == scanned(store, str(path))


def test_a_first_start_imports_without_scanning_the_file(tmp_path, monkeypatch, caplog):
    def no_scan(self, rows):
        raise AssertionError("scanned the history against an empty state")

    monkeypatch.setattr(SqliteStore, "history_overlap", no_scan)
    monkeypatch.setattr(history, "PROGRESS_RESULTS", 2)
    path = tmp_path / "history.csv"
    path.write_text(GOOD + "8,2024-01-01 12:00:00,60,2024-01-02 12:00:00,61\n")
    c = cfg(tmp_path, path)
    store = startup.open_state(c)
    with caplog.at_level(logging.INFO, logger="aki_alert.startup"):
        assert startup.reconcile(store, c) is True
    got = store.db.execute("SELECT mrn, count(*) FROM results GROUP BY mrn ORDER BY mrn")
    assert got.fetchall() == [("7", 1), ("8", 2), ("RVJ1001", 2)]
    assert store.meta()["environment"] == "ward-7"
    assert "history import: 2 results read" in caplog.text
    assert "history import: 3 results read" not in caplog.text    # the next report is at 4


def test_a_state_with_history_is_still_compared(tmp_path, monkeypatch, caplog):
    path = tmp_path / "history.csv"
    path.write_text(GOOD)
    store = startup.open_state(cfg(tmp_path, path))
    assert startup.reconcile(store, cfg(tmp_path, path)) is True
    calls = []
    real = SqliteStore.history_overlap
    monkeypatch.setattr(SqliteStore, "history_overlap",
                        lambda self, rows: calls.append(1) or real(self, rows))
    path.write_text(GOOD + "9,2024-01-03 10:00:00,50,,\n")       # the same hospital's newer file
    monkeypatch.setattr(history, "PROGRESS_RESULTS", 2)
    with caplog.at_level(logging.INFO, logger="aki_alert.startup"):
        assert startup.reconcile(store, cfg(tmp_path, path)) is True
    assert calls == [1]
    assert "history comparison: 2 results read" in caplog.text
    assert store.counts()["results"] == 4
