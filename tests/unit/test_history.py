import csv

import pytest

from aki_alert.history import ImportSummary, fingerprint, read_history
from aki_alert.timeutil import parse_csv_time


def write(tmp_path, text, newline="\n"):
    p = tmp_path / "history.csv"
    p.write_bytes(text.replace("\n", newline).encode())
    return str(p)


HEADER = "mrn,creatinine_date_0,creatinine_result_0,creatinine_date_1,creatinine_result_1\n"


def test_good_rows(tmp_path):
    path = write(tmp_path, HEADER + "1,2024-01-01 10:00:00,90.5,2024-01-02 10:00:00,95\n"
                                    "2,2024-01-01 11:00:00,70,,\n")
    s = ImportSummary()
    rows = list(read_history(path, s))
    assert rows == [("1", parse_csv_time("2024-01-01 10:00:00"), 90.5),
                    ("1", parse_csv_time("2024-01-02 10:00:00"), 95.0),
                    ("2", parse_csv_time("2024-01-01 11:00:00"), 70.0)]
    assert (s.rows, s.patients, s.results, sum(s.skipped.values())) == (2, 2, 3, 0)


def test_junk_is_skipped_and_counted_never_fatal(tmp_path):
    path = write(tmp_path, HEADER + "\n".join([
        "1,2024-01-01 10:00:00,,2024-01-02 10:00:00,95",     # half-empty
        "x_9,2024-01-01 10:00:00,90,,",                       # bad MRN
        "3,not a date,90,2024-01-02 10:00:00,abc",            # bad date, non-number
        "4,2024-01-01 10:00:00,-5,2024-01-02 10:00:00,99999", # absurd
        ",,,,",                                                # empty row
        "5,2024-01-01 10:00:00,80",                            # short row
    ]) + "\n", newline="\r\n")
    s = ImportSummary()
    rows = list(read_history(path, s))
    assert rows == [("1", parse_csv_time("2024-01-02 10:00:00"), 95.0),
                    ("5", parse_csv_time("2024-01-01 10:00:00"), 80.0)]
    assert s.skipped == {"half-empty results": 1, "rows with a bad MRN": 1, "bad dates": 1,
                         "non-numeric values": 1, "absurd values": 2}
    assert "2 absurd values" in s.describe()


def test_alphanumeric_hospital_numbers_import(tmp_path):
    """NHS trusts' hospital numbers (RVJ1001) are MRNs like the contract's digits: the feed
    files results under them, so the history must too (patientid.py's one rule)."""
    path = write(tmp_path, HEADER + "RVJ1001,2024-01-01 10:00:00,80,,\n"
                                    "K0012345,2024-01-01 10:00:00,70,,\n"
                                    "RVJ_1001,2024-01-01 10:00:00,90,,\n"
                                    f"{'9' * 33},2024-01-01 10:00:00,90,,\n")
    s = ImportSummary()
    rows = list(read_history(path, s))
    t = parse_csv_time("2024-01-01 10:00:00")
    assert rows == [("RVJ1001", t, 80.0), ("K0012345", t, 70.0)]
    assert s.skipped == {"rows with a bad MRN": 2}


def test_a_file_without_a_header_is_refused(tmp_path):
    path = write(tmp_path, "1,2024-01-01 10:00:00,90\n")
    with pytest.raises(ValueError, match="header"):
        list(read_history(path, ImportSummary()))


def test_fingerprint_changes_with_content(tmp_path):
    a = write(tmp_path, HEADER)
    fa = fingerprint(a)
    b = write(tmp_path, HEADER + "1,2024-01-01 10:00:00,90,,\n")
    assert fa != fingerprint(b) and len(fa) == 64


def test_dev_history_reads_like_the_csv_module(shared_data):
    path = str(shared_data / "dev-stream" / "history.csv")
    s = ImportSummary()
    rows = list(read_history(path, s))
    with open(path, newline="") as f:
        expected = sum(1 for row in list(csv.reader(f))[1:] for v in row[2::2] if v.strip())
    assert len(rows) + sum(s.skipped.values()) == expected
    assert s.patients > 2000
