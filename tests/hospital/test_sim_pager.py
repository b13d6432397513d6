"""The simulator's pager (contract §4), its faults, and its live score (§5) through sockets."""

from __future__ import annotations

import socket
import time

import pytest
from sim_testkit import ACK_AA, AKIS, STREAM, Client, get_metrics, hospital, post_page

from aki_alert.hospital.datafiles import read_aki, read_pages, write_aki
from aki_alert.hospital.pager_server import PagerFaults
from aki_alert.hospital.scoring import Scorer

pytestmark = pytest.mark.timeout(20)


@pytest.mark.parametrize("body", [b"1001,20240402100000", b"1001,202404021000", b"1001"])
def test_pager_accepts_good_pages(body):
    with hospital() as h:
        assert post_page(h.hospital.pager_port, body) == (200, b"ok\n")


@pytest.mark.parametrize("body", [
    b"abc,20240402100000",          # bad MRN
    b",20240402100000",             # empty MRN
    b"1001,2024040210000",          # 13 digits
    b"1001,2024040210",             # 10 digits
    b"1001,2024040210000x",         # not digits
    b"1001,20240402100000,x",       # three parts
    b"1001,20240402100000\n",       # trailing newline: the timestamp is not 14 digits
    b"",
])
def test_pager_answers_400_to_bad_bodies(body):
    with hospital() as h:
        status, _ = post_page(h.hospital.pager_port, body)
        assert status == 400
        assert h.score().pages == 0


def test_pager_fault_500s():
    with hospital(pager_faults=PagerFaults(fail_rate=1.0)) as h:
        assert post_page(h.hospital.pager_port, b"1001,20240402100000")[0] == 500
        assert h.score().pages == 0


def test_pager_fault_fraction_of_500s_is_seeded():
    with hospital(pager_faults=PagerFaults(fail_rate=0.5, seed=7)) as h:
        codes = [post_page(h.hospital.pager_port, b"1001")[0] for _ in range(40)]
        assert 5 < codes.count(500) < 35 and set(codes) == {200, 500}


def test_pager_fault_hang():
    with hospital(pager_faults=PagerFaults(hang_rate=1.0)) as h:
        with pytest.raises((TimeoutError, socket.timeout)):
            post_page(h.hospital.pager_port, b"1001,20240402100000", timeout=0.3)
        assert h.score().pages == 0


def test_pager_fault_outage_window():
    with hospital(pager_faults=PagerFaults(outage=(0.0, 0.4))) as h:
        assert post_page(h.hospital.pager_port, b"1001")[0] == 503
        time.sleep(0.5)
        assert post_page(h.hospital.pager_port, b"1001")[0] == 200


def test_pager_fault_hang_for_a_while_then_504():
    with hospital(pager_faults=PagerFaults(hang_rate=1.0, hang_seconds=0.2)) as h:
        started = time.monotonic()
        assert post_page(h.hospital.pager_port, b"1001")[0] == 504
        assert time.monotonic() - started >= 0.2
        assert h.hospital.pager.responses[0] == 1 and h.score().pages == 0


def test_pager_outage_that_answers_nothing():
    with hospital(pager_faults=PagerFaults(outage=(0.0, 0.6), outage_kind="hang",
                                           hang_seconds=5.0)) as h:
        with pytest.raises((TimeoutError, socket.timeout)):
            post_page(h.hospital.pager_port, b"1001", timeout=0.3)
        time.sleep(0.4)
        assert post_page(h.hospital.pager_port, b"1001")[0] == 200


def test_pager_outage_that_refuses_connections():
    with hospital(pager_faults=PagerFaults(outage=(0.1, 0.6), outage_kind="refuse")) as h:
        assert post_page(h.hospital.pager_port, b"1001")[0] == 200
        time.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):
            post_page(h.hospital.pager_port, b"1001")
        time.sleep(0.5)
        assert post_page(h.hospital.pager_port, b"1001")[0] == 200   # same port, listening
        assert h.score().pages == 2


def test_pager_outage_kind_is_checked():
    with pytest.raises(ValueError, match="outage_kind"):
        PagerFaults(outage=(0, 1), outage_kind="flaky")


def _run_stream(h, page_after: dict[int, bytes]) -> None:
    """ACK every message; after message i, send the page `page_after[i]` (before ACKing it)."""
    c = Client(h.hospital.mllp_port)
    for i in range(len(STREAM)):
        c.recv()
        if i in page_after:
            assert post_page(h.hospital.pager_port, page_after[i]) == (200, b"ok\n")
        c.send(ACK_AA)
    assert h.wait_done(2.0)
    c.close()


def test_live_score_latency_and_metrics():
    with hospital() as h:
        _run_stream(h, {4: b"1001,20240402100000", 5: b"1002,20240401120000"})
        s = h.score()
        assert (s.tp, s.fp, s.fn) == (1, 1, 0)
        assert 0 <= s.latency_p50 < 1.0 and s.latency_p50 == s.latency_p90
        text = get_metrics(h.hospital.pager_port)
        assert "hospital_true_positives 1.0" in text
        assert "hospital_false_positives 1.0" in text
        assert "hospital_messages_acked_total 6.0" in text
        assert 'hospital_page_latency_seconds{quantile="0.9"}' in text
        assert "hospital_nhs_reference_f3 1.0" in text


def test_live_false_negative_counts_only_once_the_aki_result_was_sent():
    with hospital() as h:
        c = Client(h.hospital.mllp_port)
        for _ in range(3):
            c.recv()
            c.send(ACK_AA)
        c.recv()
        # Checked before the 4th ACK: the hospital sends the AKI result only after it (checked
        # after it, the hospital's thread could already have sent the result: a race).
        assert h.score().fn == 0
        c.send(ACK_AA)
        c.recv()                                 # the AKI result is sent
        assert h.score().fn == 1
        c.close()


def test_page_without_timestamp_scores_as_the_latest_result():
    with hospital() as h:
        _run_stream(h, {4: b"1001"})
        assert (h.score().tp, h.score().fp) == (1, 0)


def test_pages_file_scored_offline_agrees_with_the_live_score(tmp_path):
    pages = tmp_path / "pages.txt"
    with hospital(pages_out=pages) as h:
        _run_stream(h, {2: b"1001,20240401100000", 4: b"1001", 5: b"1002,20240401120000"})
        live = h.score()
    h.stop()
    assert pages.read_text().splitlines() == [
        "1001,20240401100000", "1001,20240402100000", "1002,20240401120000"]
    akis = tmp_path / "aki.csv"
    write_aki(akis, [(r.mrn, r.time, r.aki, r.nhs) for r in AKIS])
    offline = Scorer(read_aki(akis))
    for mrn, t in read_pages(pages):
        offline.page(mrn, t, None)
    s = offline.score()
    assert (s.tp, s.fp, s.fn, s.f3) == (live.tp, live.fp, live.fn, live.f3)
    assert (s.tp, s.fp, s.fn) == (1, 2, 0)


def test_score_command_reads_a_pages_file(tmp_path, capsys):
    from aki_alert.cli import main
    pages, akis = tmp_path / "pages.txt", tmp_path / "aki.csv"
    pages.write_text("1001,20240402100000\n1001,20240402100000\n1002,20240401120000\n")
    write_aki(akis, [(r.mrn, r.time, r.aki, r.nhs) for r in AKIS])
    assert main(["score", "--pages", str(pages), "--akis", str(akis)]) == 0
    assert "TP 1  FP 1  FN 0" in capsys.readouterr().out
