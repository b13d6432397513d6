"""The incident behind the project, replayed through the real process: a state built for
environment A restarted with environment B's history."""

from __future__ import annotations

from aki_alert.hospital import messages
from aki_alert.timeutil import parse_hl7_time

from .double import MllpHospital, Pager
from .service_process import start, stop, wait_for

HEADER = "mrn,creatinine_date_0,creatinine_result_0,creatinine_date_1,creatinine_result_1\n"
# Environment A and B share MRNs (as two hospitals' number ranges can), with other people's data.
HISTORY_A = HEADER + ("7,2024-03-01 08:00:00,100,2024-03-02 08:00:00,104\n"
                      "9,2024-03-01 09:00:00,60,,\n")
HISTORY_B = HEADER + ("7,2024-03-01 08:00:00,250,2024-03-02 08:00:00,240\n"
                      "5,2024-03-01 09:00:00,80,,\n")


def result(mrn, ts, value):
    return messages.result(parse_hl7_time(ts), str(mrn), value)


def run(state, history_text, msgs, name, **extra):
    history = state.dir.parent / f"{name}.csv"
    history.write_text(history_text)
    hospital, pager = MllpHospital(msgs), Pager()
    proc = start(hospital.port, pager.port, state, history, **extra)
    try:
        finished = wait_for(lambda: hospital.done.is_set() or proc.poll() is not None, 30)
        wait_for(lambda: len(pager.bodies) >= 1, 2)
        code, log = stop(proc)
    finally:
        hospital.close()
        pager.close()
    assert finished
    return code, log, pager.bodies


def results_of(state, mrn):
    return [r[0] for r in state.rows("SELECT value FROM results WHERE mrn = ? ORDER BY time",
                                     mrn)]


def test_redeploy_over_another_environments_state_rebuilds(tmp_path, backend):
    state = backend.state(tmp_path / "state")
    code, _, pages = run(state, HISTORY_A, [result(7, "20240303080000", 110)], "a")
    assert code == 0 and pages == []
    assert state.archives() == []
    # Environment B: patient 7's baseline there is ~245. A result of 260 is no AKI in B; judged
    # against A's history (~100) it would page: the incident's false alert.
    code, log, pages = run(state, HISTORY_B, [result(7, "20240303090000", 260)], "b")
    assert code == 0
    assert pages == []
    assert "state provenance mismatch" in log and "archived" in log
    assert results_of(state, "7") == [250.0, 240.0, 260.0]
    assert results_of(state, "9") == []          # nothing of A's patients remains
    assert len(state.archives()) == 1            # A's state set aside, not deleted


def test_refuse_policy_exits_and_says_what_differs(tmp_path, backend):
    state = backend.state(tmp_path / "state")
    run(state, HISTORY_A, [result(7, "20240303080000", 110)], "a")
    code, log, _ = run(state, HISTORY_B, [result(7, "20240303090000", 260)], "b",
                       ON_HISTORY_CHANGE="refuse")
    assert code == 1
    assert "history file changed" in log and "--on-history-change rebuild" in log
    assert results_of(state, "9") == [60.0]      # the state was left untouched
    assert state.archives() == []


def test_a_newer_export_of_the_same_history_is_merged(tmp_path, backend):
    state = backend.state(tmp_path / "state")
    run(state, HISTORY_A, [result(7, "20240303080000", 110)], "a")
    newer = HISTORY_A + "11,2024-03-02 10:00:00,70,,\n"
    code, log, pages = run(state, newer, [result(11, "20240303100000", 150)], "a2")
    assert code == 0 and "provenance mismatch" not in log and "merging" in log
    assert pages == ["11,20240303100000"]                # judged against the merged history
    assert results_of(state, "7") == [100.0, 104.0, 110.0]  # live results kept
