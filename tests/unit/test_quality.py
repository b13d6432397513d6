import math

from aki_alert.quality import LabelsMonitor, read_labels, score
from aki_alert.store import open_store
from aki_alert.timeutil import DAY, parse_csv_time


def test_strict_scoring():
    labels = {("1", 10), ("2", 20), ("3", 30)}
    received = {("1", 10), ("2", 20)}          # 3's result never arrived: not the detector's miss
    q = score({("1", 10), ("1", 11), ("4", 5)}, labels, received)
    assert (q.tp, q.fp, q.fn) == (1, 2, 1)
    assert math.isclose(q.f3, 10 / (10 + 9 + 2))
    assert score(set(), labels, set()) is None


def test_labels_file_skips_negatives_and_junk(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("mrn,date,aki\n1,2024-01-01 10:00:00,y\n2,2024-01-02 10:00:00,n\n"
                 "3,not a date,y\n4,2024-01-03 10:00:00\n")
    assert read_labels(str(p)) == {("1", parse_csv_time("2024-01-01 10:00:00")),
                                   ("4", parse_csv_time("2024-01-03 10:00:00"))}


def test_monitor_scores_the_last_30_days_of_hospital_time(tmp_path, backend):
    s = open_store(str(tmp_path), backend.url, "process")
    t = parse_csv_time("2024-06-01 10:00:00")
    with s.transaction():
        for mrn, when in (("1", t), ("2", t - 40 * DAY), ("3", t - DAY)):
            s.add_result(mrn, when, 200.0)
        s.add_page("1", t, "1,x", "{}", 1)
        s.add_page("2", t - 40 * DAY, "2,x", "{}", 2)   # outside the window
    labels = tmp_path / "labels.csv"
    labels.write_text("mrn,date\n1,2024-06-01 10:00:00\n3,2024-05-31 10:00:00\n")
    q = LabelsMonitor(str(labels), s).refresh()
    assert (q.tp, q.fp, q.fn) == (1, 0, 1)
    s.close()
