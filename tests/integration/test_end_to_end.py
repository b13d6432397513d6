"""The real `aki-alert serve` process against a stand-in hospital and pager on 127.0.0.1."""

from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys

import pytest

from aki_alert.detect.nhs import NhsDetector
from aki_alert.hospital import messages
from aki_alert.hospital.datafiles import read_aki, read_messages
from aki_alert.hospital.scoring import Scorer
from aki_alert.hospital.simulator import HospitalThread
from aki_alert.offline import offline_pages
from aki_alert.timeutil import format_hl7_time, parse_csv_time, parse_hl7_time

from .double import MllpHospital, Pager
from .service_process import Backend, log_text, start, stop, wait_for

HISTORY = "mrn,creatinine_date_0,creatinine_result_0\n7,2024-03-01 08:00:00,100\n"


def result(mrn, ts, value):
    return messages.result(parse_hl7_time(ts), str(mrn), value)


@pytest.fixture
def pager():
    p = Pager()
    yield p
    p.close()


def f3(pages: set[str], akis: set[str]) -> float:
    tp, fp, fn = len(pages & akis), len(pages - akis), len(akis - pages)
    return 10 * tp / (10 * tp + 9 * fn + fp)


def dev_stream(shared_data):
    d = shared_data / "dev-stream"
    msgs = read_messages(d / "messages.mllp")
    with open(d / "aki.csv", newline="") as f:
        akis = {f"{r['mrn']},{format_hl7_time(parse_csv_time(r['date']))}"
                for r in csv.DictReader(f) if r["aki"] == "y"}
    return d, msgs, akis


def run_to_end(hospital, pager, proc, expected_pages, timeout=180):
    assert wait_for(hospital.done.is_set, timeout), f"stalled at {hospital.next}"
    wait_for(lambda: len(set(pager.bodies)) >= expected_pages, 10)
    code, err = stop(proc)
    assert code == 0, err[-3000:]
    return err


def test_small_stream_pages_once_and_survives_garbage(tmp_path, pager, backend):
    history = tmp_path / "history.csv"
    history.write_text(HISTORY)
    msgs = [result(7, "20240302080000", 110), b"this is not HL7",
            result(7, "20240303080000", 260), result(7, "20240303080000", 260),
            result(7, "20240304080000", 270)]       # same episode, no worse: not paged
    hospital = MllpHospital(msgs)
    state = backend.state(tmp_path / "state")
    proc = start(hospital.port, pager.port, state, history)
    try:
        err = run_to_end(hospital, pager, proc, 1, timeout=30)
    finally:
        hospital.close()
    assert pager.bodies == ["7,20240303080000"]
    assert all(b"\rMSA|AA" in a for a in hospital.acks) and len(hospital.acks) == 5
    assert "dead letter" in err
    assert state.value("SELECT count(*) FROM dead_letters") == 1


def test_dev_stream_matches_offline_nhs_and_survives_kill_9(tmp_path, shared_data, backend):
    """The whole dev stream through the built-in hospital in resume mode, with a kill -9 in the
    middle: the hospital's own score equals that of the NHS detector run offline."""
    d, msgs, _ = dev_stream(shared_data)
    rows = read_aki(d / "aki.csv")
    expected = offline_pages(str(d / "history.csv"), msgs, NhsDetector())
    scorer = Scorer(rows)
    for body in expected:
        mrn, ts = body.split(",")
        scorer.page(mrn, parse_hl7_time(ts), None)
    offline = scorer.score()
    with HospitalThread(msgs, rows, resume_state=tmp_path / "resume.json") as h:
        mllp, pager_port = h.hospital.mllp_port, h.hospital.pager_port
        state = backend.state(tmp_path / "state")
        proc = start(mllp, pager_port, state, d / "history.csv")
        kill_at = random.Random(7).randrange(3000, 12000)
        assert wait_for(lambda: h.hospital.next >= kill_at, 120)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = start(mllp, pager_port, state, d / "history.csv")
        assert h.wait_done(120)
        wait_for(lambda: h.score().tp + h.score().fp >= len(expected), 10)
        code, log = stop(proc)
        live = h.score()
    assert code == 0, log[-2000:]
    assert (live.tp, live.fp, live.fn) == (offline.tp, offline.fp, offline.fn)
    print(f"\ndev stream on {backend.name}, NHS detector: live {live.summary()}; "
          f"offline F3 {offline.f3:.4f}; "
          f"{live.pages} deliveries of {len(expected)} pages")


def test_replay_from_start_pages_nothing_twice(tmp_path, pager, backend):
    history = tmp_path / "history.csv"
    history.write_text(HISTORY)
    msgs = [result(7, "20240302080000", 110), result(7, "20240303080000", 260)]
    state = backend.state(tmp_path / "state")
    for _ in range(2):   # the second connection replays the whole stream from the start
        hospital = MllpHospital(msgs)
        proc = start(hospital.port, pager.port, state, history)
        try:
            run_to_end(hospital, pager, proc, 1, timeout=30)
        finally:
            hospital.close()
    assert pager.bodies == ["7,20240303080000"]
    assert state.value("SELECT count(*) FROM journal") == 2


def test_pager_outage_delays_but_never_loses_a_page(tmp_path, pager, backend):
    history = tmp_path / "history.csv"
    history.write_text(HISTORY)
    pager.fail_status = 503
    hospital = MllpHospital([result(7, "20240303080000", 260)])
    state = backend.state(tmp_path / "state")
    proc = start(hospital.port, pager.port, state, history)
    try:
        assert wait_for(hospital.done.is_set, 30)
        assert pager.bodies == []
        # Killed during the outage: the page waits in the outbox and goes out after restart.
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        pager.fail_status = None
        proc = start(hospital.port, pager.port, state, history)
        assert wait_for(lambda: pager.bodies, 30)
        code, _ = stop(proc)
    finally:
        hospital.close()
    assert pager.bodies == ["7,20240303080000"] and code == 0


# Backend-neutral: the settings are refused before any state is opened.
def test_missing_setting_is_one_clear_line():
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "aki_alert", "serve"], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "MLLP_ADDRESS is not set" in lines[0] and "example" in lines[0]


def test_malformed_setting_names_it(tmp_path):
    r = subprocess.run([sys.executable, "-m", "aki_alert", "serve", "--mllp-address", "nohost",
                        "--pager-address", "127.0.0.1:1"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "MLLP_ADDRESS='nohost' is not host:port" in r.stderr


def test_unreachable_hospital_and_missing_history_keep_running(tmp_path, pager, backend):
    with socket_free_port() as port:
        pass
    proc = start(port, pager.port, backend.state(tmp_path / "state"), tmp_path / "nope.csv")
    try:
        assert wait_for(lambda: proc.poll() is not None, 2) is False
    finally:
        code, err = stop(proc)
    assert code == 0
    assert "cannot connect to hospital at 127.0.0.1" in err
    assert "history file" in err and "cannot be read" in err


def socket_free_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]

    class Ctx:
        def __enter__(self):
            return port

        def __exit__(self, *a):
            s.close()
    return Ctx()


def test_metrics_health_and_readiness(tmp_path, pager, backend):
    import urllib.error
    import urllib.request

    with socket_free_port() as port:
        pass
    msgs = [result(7, "20240302080000", 110), result(8, "20240302090000", 90),
            result(7, "20240303080000", 260), b"garbage"]
    hospital = MllpHospital(msgs)
    # No history file: the incident's signature must show in readiness and in the metrics.
    proc = start(hospital.port, pager.port, backend.state(tmp_path / "state"),
                 tmp_path / "missing.csv", METRICS_PORT=str(port))

    def get(path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return None, ""

    try:
        assert wait_for(hospital.done.is_set, 30)
        assert wait_for(lambda: pager.bodies, 10)
        assert get("/healthz") == (200, "ok\n")
        code, body = get("/readyz")
        assert code == 503 and "history: failed" in body and "state: ok" in body
        # Judged results are counted once committed: with SQLite, by the batch's commit (at
        # most BATCH_SECONDS after the page).
        assert wait_for(lambda: "aki_results_judged_total{" in get("/metrics")[1], 5)
        _, text = get("/metrics")
    finally:
        stop(proc)
        hospital.close()
    assert 'aki_results_judged_total{admission="no",history="no"} 2.0' in text
    assert 'aki_results_judged_total{admission="no",history="yes"} 1.0' in text
    assert 'aki_messages_received_total{type="result"} 3.0' in text
    assert 'aki_dead_letters_total{reason="unparseable"} 1.0' in text
    assert 'aki_acks_sent_total{code="AA"} 4.0' in text
    assert 'aki_pages_total{outcome="delivered"} 1.0' in text
    assert "aki_history_loaded 0.0" in text
    assert "aki_page_latency_seconds_count 1.0" in text
    from prometheus_client.parser import text_string_to_metric_families

    labels = {v for fam in text_string_to_metric_families(text) if fam.name.startswith("aki_")
              for smp in fam.samples
              for k, v in smp.labels.items() if k != "le"}
    assert labels and not labels & {"7", "8"}   # no MRN in any label


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_model_exports_its_drift_signal(tmp_path, pager, backend):
    """With the model, every judged result is counted against the training distribution stored
    in the artifact; PSI and the positive share are computed when /metrics is read."""
    import urllib.request

    with socket_free_port() as port:
        pass
    msgs = [result(7, "20240302080000", 110), result(8, "20240302090000", 90),
            result(7, "20240303080000", 260)]
    hospital = MllpHospital(msgs)
    proc = start(hospital.port, pager.port, backend.state(tmp_path / "state"),
                 tmp_path / "missing.csv", METRICS_PORT=str(port), DETECTOR="model")
    try:
        assert wait_for(hospital.done.is_set, 30)
        assert wait_for(lambda: pager.bodies, 10)

        def metrics_text():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                return r.read().decode()
        # Counted once the batch commits (at most BATCH_SECONDS after the page).
        assert wait_for(lambda: "aki_drift_window_results 3.0" in metrics_text(), 5)
        text = metrics_text()
    finally:
        stop(proc)
        hospital.close()
    assert "aki_drift_window_results 3.0" in text
    assert 'aki_drift_psi{quantity="score"}' in text
    assert 'aki_drift_psi{quantity="creatinine"}' in text
    assert "aki_drift_expected_positive_rate 0.0244" in text  # models/v2's reference
    assert "aki_drift_positive_rate 0.333" in text


def test_sigterm_with_a_page_stuck_in_retry_exits_0_within_5s(tmp_path, pager, backend):
    import time

    history = tmp_path / "history.csv"
    history.write_text(HISTORY)
    pager.fail_status = 500
    hospital = MllpHospital([result(7, "20240303080000", 260)])
    state = backend.state(tmp_path / "state")
    proc = start(hospital.port, pager.port, state, history)
    try:
        assert wait_for(hospital.done.is_set, 30)
        started = time.monotonic()
        code, err = stop(proc)
        elapsed = time.monotonic() - started
    finally:
        hospital.close()
    assert code == 0 and elapsed < 5.0, err[-2000:]
    assert "shut down cleanly" in err
    # The undelivered page is still pending in the state, for the next start.
    with state.store() as s:
        assert [p.body for p in s.pending_pages()] == ["7,20240303080000"]


# SQLite only, for time (~45 s more): the detector never touches the state; the dev stream on
# PostgreSQL runs in test_dev_stream_matches_offline_nhs_and_survives_kill_9[postgresql].
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_dev_stream_with_the_shipped_model(tmp_path, shared_data, backend):
    """The model served live over the dev stream, scored by the built-in hospital: F3 ≥ 0.997,
    and exactly the pages of the same model run offline."""
    from aki_alert.detect.model import load_model

    d, msgs, _ = dev_stream(shared_data)
    rows = read_aki(d / "aki.csv")
    expected = offline_pages(str(d / "history.csv"), msgs, load_model())
    with HospitalThread(msgs, rows) as h:
        proc = start(h.hospital.mllp_port, h.hospital.pager_port,
                     backend.state(tmp_path / "state"), d / "history.csv", DETECTOR="model")
        assert h.wait_done(120)
        wait_for(lambda: h.score().pages >= len(expected), 10)
        code, log = stop(proc)
        live = h.score()
    assert code == 0, log[-2000:]
    assert live.tp + live.fp == len(set(expected))
    print(f"\ndev stream on {backend.name}, model: {live.summary()}")
    assert live.f3 >= 0.997


def test_replay_beside_the_running_service_is_paged_without_a_restart(tmp_path, pager, backend):
    history = tmp_path / "history.csv"
    history.write_text(HISTORY)
    hospital = MllpHospital([result(7, "20240302080000", 110)])
    state = backend.state(tmp_path / "state")
    proc = start(hospital.port, pager.port, state, history)
    try:
        assert wait_for(hospital.done.is_set, 30)
        missed = tmp_path / "missed.txt"
        missed.write_bytes(b"\n".join((result(9, "20240302090000", 100),
                                       result(9, "20240303090000", 260))))
        where = ["--state-url", state.url] if state.url else []
        r = subprocess.run([sys.executable, "-m", "aki_alert", "replay", str(missed),
                            "--state-dir", str(state.dir), *where, "--detector", "nhs",
                            "--page-missed"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert wait_for(lambda: pager.bodies, 15)
    finally:
        code, log = stop(proc)
        hospital.close()
    assert pager.bodies == ["9,20240303090000"]
    assert "state changed by a replay" in log


def test_console_runs_as_its_own_process_and_dies_with_the_service(tmp_path, pager, backend):
    import socket
    import urllib.error
    import urllib.request

    with socket_free_port() as port:
        pass
    history = tmp_path / "history.csv"
    history.write_text(HISTORY)
    hospital = MllpHospital([result(7, "20240302080000", 110)])
    state = backend.state(tmp_path / "state")
    proc = start(hospital.port, pager.port, state, history,
                 CONSOLE_PORT=str(port), CONSOLE_TOKEN="t0ken")

    def status():
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    try:
        assert wait_for(lambda: status() == 401, 20)      # serving, and asks for the token
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert wait_for(lambda: status() is None, 5)      # gone with its parent
        # A console port already taken stops the service with one clear line.
        with socket.create_server(("127.0.0.1", 0)) as taken:
            busy = taken.getsockname()[1]
            proc = start(hospital.port, pager.port, state, history,
                         CONSOLE_PORT=str(busy), CONSOLE_TOKEN="t0ken")
            assert proc.wait(30) == 1
    finally:
        code, log = stop(proc)
        hospital.close()
    assert f"CONSOLE_PORT {busy}" in log and "cannot be opened" in log


# PostgreSQL only, by nature: the lease exists only with STATE_URL.
def test_a_start_up_longer_than_the_lease_leads(tmp_path, pager, postgres_url):
    """One replica alone: whatever its start-up takes, it must end up serving, not step down."""
    history = tmp_path / "history.csv"
    rows = [f"{100000 + i},2024-03-01 08:00:00,{90 + i % 20}" for i in range(150_000)]
    history.write_text("mrn,creatinine_date_0,creatinine_result_0\n" + "\n".join(rows) + "\n")
    hospital = MllpHospital([result(7, "20240302080000", 110)])
    proc = start(hospital.port, pager.port,
                 Backend("postgresql", postgres_url, lease_seconds="1").state(tmp_path / "s"),
                 history)
    try:
        assert wait_for(lambda: hospital.done.is_set() or proc.poll() is not None, 60)
        assert proc.poll() is None, log_text(proc)[-2000:]
        assert hospital.done.is_set()
    finally:
        code, log = stop(proc)
        hospital.close()
    assert code == 0, log[-2000:]
    assert "imported in" in log and "lost leadership" not in log


def test_sigterm_during_a_long_history_import_exits_0_and_loses_nothing(tmp_path, pager,
                                                                        backend):
    import time

    history = tmp_path / "history.csv"
    rows = [f"{100000 + i},2024-03-01 08:00:00,{90 + i % 20},2024-03-02 08:00:00,95"
            for i in range(300_000)]
    history.write_text("mrn,creatinine_date_0,creatinine_result_0,creatinine_date_1,"
                       "creatinine_result_1\n" + "\n".join(rows) + "\n")
    hospital = MllpHospital([result(7, "20240302080000", 110)])
    state = backend.state(tmp_path / "state")
    proc = start(hospital.port, pager.port, state, history)
    try:
        assert wait_for(lambda: "importing history" in log_text(proc), 20)
        time.sleep(0.2)                       # inside the import (it takes seconds)
        code, log = stop(proc)
        assert code == 0 and "during start-up" in log, log[-2000:]
        assert not hospital.done.is_set()
        proc = start(hospital.port, pager.port, state, history)
        assert wait_for(lambda: hospital.done.is_set() or proc.poll() is not None, 60)
        assert hospital.done.is_set(), log_text(proc)[-2000:]
    finally:
        code, log = stop(proc)
        hospital.close()
    assert code == 0 and "imported" in log
    # The interrupted import left nothing behind; the second one imported every row once.
    assert state.value("SELECT count(*) FROM results WHERE source = 'history'") == 600_000


def test_repages_live_are_the_offline_ones_across_a_restart(tmp_path, pager, backend):
    """A generated stream, NHS detector (whose shipped re-page policy pages again): the service
    pages exactly what offline.py decides, re-pages included, though killed (-9) midway and
    sent the whole stream again on the same state: each page decided once, no body twice."""
    from aki_alert.hospital import datafiles
    from aki_alert.hospital.generator import generate
    from aki_alert.repage import NEVER

    paths = datafiles.write_hospital(tmp_path / "gen",
                                     generate(days=45, patients=6000, seed=11, cohort_size=0))
    msgs = datafiles.read_messages(paths["messages"])
    history = str(paths["history"])
    expected = offline_pages(history, msgs, NhsDetector())
    once = offline_pages(history, msgs, NhsDetector(), NEVER)
    assert len(expected) == len(set(expected)) and set(once) < set(expected)
    half = len(msgs) // 2
    first = set(offline_pages(history, msgs[:half], NhsDetector()))
    state = backend.state(tmp_path / "state")
    hospital = MllpHospital(msgs[:half])
    proc = start(hospital.port, pager.port, state, paths["history"])
    try:
        assert wait_for(hospital.done.is_set, 120), f"stalled at {hospital.next}"
        wait_for(lambda: set(pager.bodies) >= first, 10)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        hospital.close()
    hospital = MllpHospital(msgs)
    proc = start(hospital.port, pager.port, state, paths["history"])
    try:
        run_to_end(hospital, pager, proc, len(expected), timeout=180)
    finally:
        hospital.close()
    assert sorted(set(pager.bodies)) == sorted(expected)
    assert sorted(state.value("SELECT count(*) FROM outbox WHERE body = ?", b) for b in
                  expected) == [1] * len(expected)
    assert state.value("SELECT count(*) FROM outbox") == len(expected)
    print(f"\ngenerated stream on {backend.name}, NHS: {len(expected)} pages, "
          f"{len(set(expected) - set(once))} of them re-pages")


def test_hl7_nack_policy_and_hashed_patient_ids(tmp_path, pager, backend):
    """NACK_POLICY=hl7 against an engine that files AE/AR in its error queue and moves on: a
    message that cannot be used is answered AE with an ERR saying why, an unreadable one AR,
    both still journaled as dead letters; the rest AA, with standard ACKs. With
    LOG_PATIENT_IDS=hashed the log carries no MRN, the pager still gets it."""
    import hmac
    from hashlib import sha256

    from aki_alert.hospital.ackcheck import check_ack

    with socket_free_port() as port:
        pass
    history = tmp_path / "history.csv"
    history.write_text(HISTORY.replace("\n7,", "\n555000111,"))
    bad = result(555000111, "20240302090000", 120).replace(b"||120\r", b"||lots\r")
    msgs = [result(555000111, "20240302080000", 110), bad, b"this is not HL7",
            result(555000111, "20240303080000", 260)]
    hospital = MllpHospital(msgs, nack_moves_on=True)
    state = backend.state(tmp_path / "state")
    key = "test-key-0123456789abcdef"
    proc = start(hospital.port, pager.port, state, history, NACK_POLICY="hl7",
                 LOG_PATIENT_IDS="hashed", LOG_PATIENT_KEY=key, METRICS_PORT=str(port))
    try:
        assert wait_for(hospital.done.is_set, 30), f"stalled at {hospital.next}"
        assert wait_for(lambda: pager.bodies, 10)
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
        code, err = stop(proc)
    finally:
        hospital.close()
    assert code == 0, err[-3000:]
    assert pager.bodies == ["555000111,20240303080000"]
    assert [check_ack(a) for a in hospital.acks] == ["AA", "AE", "AR", "AA"]
    ae = hospital.acks[1].split(b"\r")
    assert ae[0].split(b"|")[8] == b"ACK^R01^ACK"
    assert ae[2].startswith(b"ERR|||102^Data type error^HL70357|E||||OBX-5 creatinine 'lots'")
    assert state.value("SELECT count(*) FROM dead_letters") == 2
    for code_, n in (("AA", 2), ("AE", 1), ("AR", 1)):
        assert f'aki_acks_sent_total{{code="{code_}"}} {n}.0' in text
    tag = "mrn#" + hmac.new(key.encode(), b"555000111", sha256).hexdigest()[:12]
    assert "555000111" not in err
    assert f"page decided: {tag},20240303080000" in err


def population_history(path, scale: float) -> None:
    """1,500 results of 300 patients drawn from the default model's training histogram of
    creatinine, times `scale` (1.4: a hospital whose creatinine runs higher, as cohort-2025's)."""
    from aki_alert.detect.model import load_model
    from aki_alert.drift import CREATININE_BOUNDS

    rnd = random.Random(3)
    fractions = load_model().reference["creatinine"]["fractions"]
    edges = (20.0,) + CREATININE_BOUNDS + (1500.0,)
    lines = ["mrn," + ",".join(f"creatinine_date_{i},creatinine_result_{i}" for i in range(5))]
    for mrn in range(1000, 1300):
        bins = rnd.choices(range(len(fractions)), weights=fractions, k=5)
        cells = [f"2024-01-{d + 1:02d} 08:00:00,"
                 f"{scale * rnd.uniform(edges[b] + 0.01, edges[b + 1]):.2f}"
                 for d, b in enumerate(bins)]
        lines.append(f"{mrn}," + ",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def test_a_history_from_another_population_is_served_by_the_shift_robust_model(
        tmp_path, pager, backend):
    """The history says which hospital this is: another population's is judged by the
    shift-robust model from the first message, this hospital's by the default; every restart
    decides the same from the state's record, and MODEL_ON_SHIFT=none keeps the default."""
    import urllib.request

    def served(history, state, **extra):
        with socket_free_port() as port:
            pass
        hospital = MllpHospital([result(7, "20240302080000", 110)])
        proc = start(hospital.port, pager.port, state, history, METRICS_PORT=str(port),
                     DETECTOR="model", **extra)
        try:
            assert wait_for(hospital.done.is_set, 30), log_text(proc)[-2000:]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        finally:
            code, log = stop(proc)
            hospital.close()
        assert code == 0, log[-2000:]
        version = text.split('aki_detector_info{detector="model",version="')[1].split('"')[0]
        psi = float(text.split("\naki_history_creatinine_psi ")[1].split()[0])
        return version, psi, log

    other, ours = tmp_path / "other.csv", tmp_path / "ours.csv"
    population_history(other, 1.4)
    population_history(ours, 1.0)
    state = backend.state(tmp_path / "other-state")
    version, psi, log = served(other, state)
    assert version == "v3-robust" and psi > 0.25
    assert "serving the shift-robust model v3-robust instead of v2" in log
    assert served(other, state)[:2] == (version, psi)          # a restart: the state's record
    assert served(ours, backend.state(tmp_path / "ours-state"))[0] == "v2"
    kept = served(other, backend.state(tmp_path / "kept-state"), MODEL_ON_SHIFT="none")
    assert kept[0] == "v2" and kept[1] > 0.25
    bad = start(pager.port, pager.port, backend.state(tmp_path / "bad-state"), other,
                DETECTOR="model", MODEL_ON_SHIFT="v9")
    assert bad.wait(30) != 0
    assert "MODEL_ON_SHIFT 'v9' is not a shipped model; one of v1, v1-robust" in log_text(bad)
