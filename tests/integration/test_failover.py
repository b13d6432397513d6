"""Replicas on one PostgreSQL state: exactly one leads; kill it and another takes over without
losing or doubling a page; pause it past its lease and it acknowledges and pages nothing more."""

from __future__ import annotations

import signal
import time

import pytest

from aki_alert.detect.nhs import NhsDetector
from aki_alert.hospital.datafiles import read_aki, read_messages, write_hospital
from aki_alert.hospital.generator import generate
from aki_alert.hospital.scoring import Scorer
from aki_alert.hospital.simulator import HospitalThread
from aki_alert.offline import offline_pages
from aki_alert.timeutil import parse_hl7_time

from .service_process import (Backend, leader_pid, log_text, one_leads, start, stop,
                              wait_for)

# PostgreSQL only, by nature: replicas share one state, which only STATE_URL provides.
pytest.importorskip("psycopg")
LEASE = "1"


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    d = tmp_path_factory.mktemp("ha-hospital")
    paths = write_hospital(d, generate(days=20, patients=3000, seed=3, cohort_size=10))
    msgs, rows = read_messages(paths["messages"]), read_aki(paths["aki"])
    expected = offline_pages(str(paths["history"]), msgs, NhsDetector())
    scorer = Scorer(rows)
    for body in expected:
        mrn, ts = body.split(",")
        scorer.page(mrn, parse_hl7_time(ts), None)
    return paths, msgs, rows, expected, scorer.score()


def replica(h, tmp_path, name, paths, url):
    return start(h.hospital.mllp_port, h.hospital.pager_port,
                 Backend("postgresql", url, LEASE).state(tmp_path / name), paths["history"])


def test_ten_leader_kills_lose_nothing(tmp_path, stream, postgres_url):
    paths, msgs, rows, expected, clean = stream
    failovers = []
    with HospitalThread(msgs, rows, resume_state=tmp_path / "resume.json") as h:
        procs = {n: replica(h, tmp_path, n, paths, postgres_url) for n in ("a", "b")}
        try:
            for k in range(10):
                assert wait_for(lambda k=k: h.hospital.next >= 60 + 120 * k, 60), k
                pid = leader_pid(postgres_url)
                name = next(n for n, p in procs.items() if p.pid == pid)
                acked = h.hospital.acked
                killed = time.monotonic()
                procs[name].send_signal(signal.SIGKILL)
                procs[name].wait()
                procs[name] = replica(h, tmp_path, name, paths, postgres_url)   # back as standby
                assert wait_for(lambda a=acked: h.hospital.acked > a or h.hospital.done, 30)
                failovers.append(time.monotonic() - killed)
                assert wait_for(lambda: one_leads(postgres_url, procs.values()), 30)
            assert h.wait_done(120)
            wait_for(lambda: h.score().tp + h.score().fp >= len(expected), 10)
        finally:
            codes = [stop(p)[0] for p in procs.values()]
        live = h.score()
    assert (live.tp, live.fp, live.fn) == (clean.tp, clean.fp, clean.fn)
    assert live.pages - (live.tp + live.fp) <= 10          # at most one duplicate per kill
    assert all(c in (0, 3) for c in codes), codes
    failovers.sort()
    print(f"\nfailover over 10 kills (lease {LEASE} s): p50 {failovers[5]:.2f} s, "
          f"max {failovers[-1]:.2f} s; {live.summary()}")


def test_a_leader_paused_past_its_lease_never_acknowledges_or_pages_again(tmp_path, stream,
                                                                           postgres_url):
    paths, msgs, rows, expected, clean = stream
    with HospitalThread(msgs, rows, resume_state=tmp_path / "resume.json") as h:
        procs = {n: replica(h, tmp_path, n, paths, postgres_url) for n in ("a", "b")}
        try:
            assert wait_for(lambda: h.hospital.next >= 300, 60)
            old = next(p for p in procs.values() if p.pid == leader_pid(postgres_url))
            old.send_signal(signal.SIGSTOP)
            position = h.hospital.next
            # The other replica takes over and the feed moves on without the paused one.
            assert wait_for(lambda: h.hospital.next > position + 200 or h.hospital.done, 60)
            pages_before = h.score().pages
            old.send_signal(signal.SIGCONT)
            assert old.wait(15) == 3
            assert h.wait_done(120)
            wait_for(lambda: h.score().tp + h.score().fp >= len(expected), 10)
            log = log_text(old)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    stop(p)
        live = h.score()
    assert "lost leadership" in log
    assert (live.tp, live.fp, live.fn) == (clean.tp, clean.fp, clean.fn)
    assert live.pages >= pages_before
    assert live.pages - (live.tp + live.fp) <= 1
