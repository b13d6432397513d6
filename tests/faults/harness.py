"""What every fault test shares: a generated stream with its uninterrupted (offline) score, a
harness that starts the built-in hospital and the real `aki-alert serve` process (on the test's
state backend) and stops them all at the end, and read-only queries of the service's state
(`State.value`, the same SQL for SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from aki_alert.hospital.process import terminate
from aki_alert.detect import Detector
from aki_alert.detect.nhs import NhsDetector
from aki_alert.hospital import datafiles
from aki_alert.hospital.datafiles import AkiRow
from aki_alert.hospital.generator import generate
from aki_alert.hospital.scoring import Score, Scorer
from aki_alert.hospital.simulator import HospitalThread
from aki_alert.offline import offline_pages
from aki_alert.timeutil import parse_hl7_time
from integration.service_process import SQLITE, Backend, State, log_text, start, wait_for


def score_pages(rows: list[AkiRow], pages: list[str]) -> Score:
    """The hospital's strict score of a list of page bodies (`MRN,YYYYMMDDHHMMSS`)."""
    scorer = Scorer(rows)
    for body in pages:
        mrn, ts = body.split(",")
        scorer.page(mrn, parse_hl7_time(ts), None)
    return scorer.score()


@dataclass
class Stream:
    dir: Path
    messages: list[bytes]
    rows: list[AkiRow]
    history: Path
    expected_pages: list[str]   # what an uninterrupted run pages (NHS detector, offline)
    expected: Score             # ... and its score

    def expect(self, detector: Detector, messages: list[bytes] | None = None,
               history: Path | None = None) -> tuple[list[str], Score]:
        pages = offline_pages(str(history or self.history),
                              self.messages if messages is None else messages, detector)
        return pages, score_pages(self.rows, pages)


def make_stream(out: Path, days: int, patients: int, seed: int) -> Stream:
    datafiles.write_hospital(out, generate(days=days, patients=patients, seed=seed,
                                           cohort_size=0))
    return load_stream(out)


def load_stream(out: Path) -> Stream:
    """The files `datafiles.write_hospital` wrote into `out`, with the NHS offline reference."""
    messages = datafiles.read_messages(out / "messages.mllp")
    rows = datafiles.read_aki(out / "aki.csv")
    pages = offline_pages(str(out / "history.csv"), messages, NhsDetector())
    return Stream(out, messages, rows, out / "history.csv", pages, score_pages(rows, pages))


def outcome(score: Score) -> tuple[int, int, int]:
    return score.tp, score.fp, score.fn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Harness:
    """Starts hospitals (`HospitalThread`) and service processes on `backend`; `close()` stops
    them all."""

    def __init__(self, backend: Backend = SQLITE) -> None:
        self.backend = backend
        self.hospitals: list[HospitalThread] = []
        self.procs: list[subprocess.Popen] = []
        self.cleanups: list = []

    def hospital(self, messages: list[bytes], rows: list[AkiRow], **kwargs) -> HospitalThread:
        h = HospitalThread(messages, rows, **kwargs)
        self.hospitals.append(h)
        h.start()
        return h

    def state(self, directory: Path) -> State:
        """The state of this test's services: `directory` as STATE_DIR, on the backend."""
        return self.backend.state(directory)

    def serve(self, h: HospitalThread, state: State, history: Path,
              **env: str) -> subprocess.Popen:
        proc = start(h.hospital.mllp_port, h.hospital.pager_port, state, history, **env)
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill9(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    @staticmethod
    def terminate(proc: subprocess.Popen, timeout: float = 10.0) -> tuple[int, float, str]:
        """SIGTERM; (exit code, seconds to exit, log). SIGKILL after `timeout`."""
        started = time.monotonic()
        code = terminate(proc, timeout)
        return code, time.monotonic() - started, log_text(proc)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for h in self.hospitals:
            try:
                h.stop()
            except Exception:  # noqa: BLE001 - stop the others regardless
                pass
        for fn in reversed(self.cleanups):
            fn()
        for proc in self.procs:
            try:
                os.unlink(proc.log_path)
            except OSError:
                pass


def query(state: State, sql: str, *args):
    """One value from the service's state, read-only (safe while the service runs)."""
    return state.value(sql, *args)


def assert_journal_complete(state: State, messages: list[bytes]) -> None:
    """Every distinct message the hospital had acknowledged is in the journal: none lost."""
    distinct = len(set(messages))
    journaled = query(state, "SELECT count(*) FROM journal")
    assert journaled == distinct, (f"{distinct - journaled} acknowledged message(s) missing "
                                   f"from the journal ({journaled} of {distinct})")


def pending_pages(state: State) -> int:
    return query(state, "SELECT count(*) FROM outbox WHERE status = 'pending'")


def reach(h: HospitalThread, proc: subprocess.Popen, position: int,
          timeout: float = 30.0) -> None:
    """Wait (polling fast) until the hospital's resume position reaches `position`, with the
    service still running."""
    assert wait_for(lambda: h.hospital.next >= position or proc.poll() is not None, timeout,
                    interval=0.0005), f"stalled at {h.hospital.next}:\n" + log_text(proc)[-3000:]
    assert proc.poll() is None, "the service exited:\n" + log_text(proc)[-3000:]


def finish(h: HospitalThread, proc: subprocess.Popen, state: State,
           timeout: float = 60.0) -> None:
    """Wait until the hospital has every message acknowledged and the outbox is empty."""
    n = len(h.hospital.frames)
    assert h.wait_done(timeout), (f"stream stalled at {h.hospital.next}/{n}:\n"
                                  + log_text(proc)[-3000:])
    assert wait_for(lambda: pending_pages(state) == 0, timeout, interval=0.05), (
        f"{pending_pages(state)} page(s) still pending:\n" + log_text(proc)[-3000:])
