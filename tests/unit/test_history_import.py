"""The fast history import keeps the careful one's results and counts, and the store's import
stays idempotent and all-or-nothing."""

from __future__ import annotations

import csv
import math
import os
import tempfile
from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aki_alert import history
from aki_alert.history import ImportSummary, read_history
from aki_alert.hl7 import MAX_CREATININE, MIN_CREATININE
from aki_alert.patientid import is_valid_mrn
from aki_alert.store.sqlite import SqliteStore
from aki_alert.timeutil import parse_csv_time

HEADER = ["mrn"] + [f"creatinine_{k}_{i}" for i in range(6) for k in ("date", "result")]


def reference(path: str) -> tuple[list[tuple[str, int, float]], ImportSummary]:
    """The cell-by-cell reader as it was before the fast path (the specification)."""
    s = ImportSummary()
    out, patients = [], set()
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            if not row or not any(c.strip() for c in row):
                continue
            s.rows += 1
            mrn = row[0].strip()
            if not is_valid_mrn(mrn):
                s.skipped["rows with a bad MRN"] += 1
                continue
            kept = 0
            for i in range(1, len(row) - 1, 2):
                date, value = row[i].strip(), row[i + 1].strip()
                if not date and not value:
                    continue
                if not date or not value:
                    s.skipped["half-empty results"] += 1
                    continue
                try:
                    t = parse_csv_time(date)
                except ValueError:
                    s.skipped["bad dates"] += 1
                    continue
                try:
                    v = float(value)
                except ValueError:
                    s.skipped["non-numeric values"] += 1
                    continue
                if not (math.isfinite(v) and MIN_CREATININE <= v <= MAX_CREATININE):
                    s.skipped["absurd values"] += 1
                    continue
                kept += 1
                out.append((mrn, t, v))
            if len(row) % 2 == 0 and row[-1].strip():
                s.skipped["dangling cells"] += 1
            if kept:
                patients.add(mrn)
                s.results += kept
    s.patients = len(patients)
    return out, s


good_dates = st.builds(
    lambda d, h, m, s: f"2024-{1 + d // 28:02d}-{1 + d % 28:02d} {h:02d}:{m:02d}:{s:02d}",
    st.integers(0, 335), st.integers(0, 23), st.integers(0, 59), st.sampled_from([0, 0, 30]))
bad_dates = st.sampled_from(["2024-02-30 10:00:00", "2024-13-01 10:00:00", "not a date",
                             "2024-01-01T10:00", "2024-01-01 10:00", " 2024-01-01 10:00:00 ",
                             "2024-01-01 24:00:00", "２０２４-01-01 10:00:00", "2024/01/01 10:00"])
good_values = st.floats(MIN_CREATININE, MAX_CREATININE).map(lambda v: f"{v:.2f}")
bad_values = st.sampled_from(["abc", "-5", "99999", "nan", "inf", "-inf", "1e999", " 90 ", "1_0",
                              "٩٠", "0", "", " ", "\t", "90.", ".5", "+80"])
value_flaws = st.sampled_from(["nan", "inf", "-inf", "1e999", "abc", " ", "", "99999", "-5"])
junk = st.sampled_from(["", " ", "  ", "x", "\t", "1"])
cells = st.one_of(good_dates, good_dates, good_values, good_values, bad_dates, bad_values, junk)
mrns = st.one_of(st.sampled_from(["1", "22", "333", "007", "RVJ1001", "x9"]),
                 st.sampled_from(["", " ", "x_9", "٣", " 12 ", "1.5", "-1", "9" * 33]))


@st.composite
def rows(draw):
    mrn = draw(mrns)
    if draw(st.booleans()):  # mostly well-formed: the fast path's case, maybe with a flaw
        k = draw(st.integers(0, 6))
        body = [c for _ in range(k) for c in (draw(good_dates), draw(good_values))]
        if body and draw(st.booleans()):  # one flawed cell, often a value after a good one
            if draw(st.booleans()):
                body[2 * draw(st.integers(0, k - 1)) + 1] = draw(value_flaws)
            else:
                body[draw(st.integers(0, len(body) - 1))] = draw(cells)
        body += [""] * draw(st.integers(0, 4))
        if draw(st.integers(0, 5)) == 0:
            body.append(draw(cells))
        return [mrn] + body
    return [mrn] + draw(st.lists(cells, max_size=9))


NAN_AFTER_A_GOOD_VALUE = [["1", "2024-01-01 10:00:00", "80", "2024-01-02 10:00:00", "nan"]]


@example(NAN_AFTER_A_GOOD_VALUE, 4)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows(), max_size=12), st.integers(1, 4))
def test_the_fast_path_agrees_with_the_careful_reader(file_rows, cache_size):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "history.csv")
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(HEADER)
            w.writerows(file_rows)
        expected, want = reference(path)
        old = history._TIME_CACHE_SIZE
        history._TIME_CACHE_SIZE = cache_size  # also exercise the cache emptying when full
        try:
            s = ImportSummary()
            got = list(read_history(path, s))
        finally:
            history._TIME_CACHE_SIZE = old
    assert got == expected
    assert (s.rows, s.patients, s.results) == (want.rows, want.patients, want.results)
    assert s.skipped == want.skipped


def test_a_well_formed_padded_file_reads_whole(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text(",".join(HEADER) + "\n"
                 "5,2024-01-01 10:00:00,80,2024-01-02 10:00:00,81.5,,,,,,,,\n"
                 "6,2024-01-01 10:00:00,70,,,,,,,,,,\n")
    s = ImportSummary()
    assert list(read_history(str(p), s)) == [
        ("5", parse_csv_time("2024-01-01 10:00:00"), 80.0),
        ("5", parse_csv_time("2024-01-02 10:00:00"), 81.5),
        ("6", parse_csv_time("2024-01-01 10:00:00"), 70.0)]
    assert (s.rows, s.patients, s.results, s.skipped) == (2, 2, 3, Counter())


T = 1_700_000_000


def test_import_is_idempotent_and_keeps_what_the_state_has(tmp_path):
    store = SqliteStore(str(tmp_path / "state.db"))
    assert store.add_result("1", T, 50.0) is True  # a feed result already in the state
    assert store.import_results([("1", T, 99.0), ("1", T + 60, 60.0), ("1", T + 60, 61.0),
                                 ("2", T, 70.0)]) == 2
    assert store.import_results(iter([("1", T + 60, 62.0), ("2", T, 70.0)])) == 0
    got = store.db.execute("SELECT mrn, time, value, source FROM results ORDER BY 1, 2").fetchall()
    assert got == [("1", T, 50.0, "feed"), ("1", T + 60, 60.0, "history"),
                   ("2", T, 70.0, "history")]


def test_an_import_that_fails_midway_leaves_the_state_as_before(tmp_path):
    store = SqliteStore(str(tmp_path / "state.db"))
    store.import_results([("1", T, 50.0)])

    def rows():
        yield ("2", T, 60.0)
        yield ("3", T, 70.0)
        raise KeyboardInterrupt  # SIGTERM during start-up raises from Python code like this

    with pytest.raises(KeyboardInterrupt):
        store.import_results(rows())
    assert store.db.execute("SELECT mrn FROM results").fetchall() == [("1",)]
    assert not store.db.in_transaction
