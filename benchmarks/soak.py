"""Soak: a generated year through the real `aki-alert serve` in the hospital's real-time mode,
sped up to last a few minutes, with faults at random times, watching the service's memory.

Faults (seeded): kill -9 of the service (restarted after a random pause), SIGTERM restarts
(must exit 0 within 5 s), dropped MLLP connections, and a pager that fails some requests, hangs
a few and has an outage window. The hospital runs in live (resume) mode: each message is sent
once, after the last ACK. Every few seconds the service's VmRSS (from /proc/PID/status) is
sampled. At the end: RSS over time (first vs last quarter), and the hospital's score against
the clean run (the same detector over the same stream, offline).

Not part of `make test` or `make bench` (it takes minutes):

    python -m benchmarks.soak [--days 365] [--patients 10000] [--minutes 6] [--seed 1]
                              [--detector model|nhs] [--kills 8] [--terms 4] [--disconnects 30]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aki_alert.hospital.process import terminate
from aki_alert.hospital.datafiles import read_aki, read_messages, write_hospital
from aki_alert.hospital.generator import generate
from aki_alert.hospital.pager_server import PagerFaults
from aki_alert.hospital.scoring import Scorer
from aki_alert.hospital.simulator import HospitalThread
from aki_alert.offline import offline_pages
from aki_alert.timeutil import DAY, parse_hl7_time

SAMPLE_EVERY = 2.0
WARMUP = 3.0          # seconds after a (re)start not sampled: the process is still loading


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def start_service(h: HospitalThread, state: Path, history: Path, detector: str,
                  logs: list[str]) -> subprocess.Popen:
    env = dict(os.environ, MLLP_ADDRESS=f"127.0.0.1:{h.hospital.mllp_port}",
               PAGER_ADDRESS=f"127.0.0.1:{h.hospital.pager_port}", STATE_DIR=str(state),
               HISTORY_PATH=str(history), METRICS_PORT="0", DETECTOR=detector,
               LOG_LEVEL="WARNING")
    log = tempfile.NamedTemporaryFile("w", prefix="aki-soak-", suffix=".log", delete=False)
    logs.append(log.name)
    proc = subprocess.Popen([sys.executable, "-m", "aki_alert", "serve"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def pending(state: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return -1


def drop_connection(h: HospitalThread) -> None:
    """Close the hospital's current MLLP connection (as an operator's "disconnect" would)."""
    def drop() -> None:
        conn = h.hospital._conn
        if conn is not None:
            conn.drop("injected")
    h.loop.call_soon_threadsafe(drop)


def mean(xs: list[int]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--patients", type=int, default=10000)
    ap.add_argument("--minutes", type=float, default=6.0, help="wall time of the stream")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--detector", choices=("model", "nhs"), default="model")
    ap.add_argument("--kills", type=int, default=8)
    ap.add_argument("--terms", type=int, default=4)
    ap.add_argument("--disconnects", type=int, default=30)
    ap.add_argument("--out", type=Path, help="keep the data and state here (default: temp)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = args.out or Path(tempfile.mkdtemp(prefix="aki-soak-"))
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    write_hospital(work / "data", generate(days=args.days, patients=args.patients,
                                           seed=args.seed, cohort_size=0))
    msgs = read_messages(work / "data" / "messages.mllp")
    rows = read_aki(work / "data" / "aki.csv")
    history = work / "data" / "history.csv"
    if args.detector == "model":
        from aki_alert.detect.model import load_model
        detector = load_model()
    else:
        from aki_alert.detect.nhs import NhsDetector
        detector = NhsDetector()
    clean_pages = offline_pages(str(history), msgs, detector)
    clean = Scorer(rows)
    for body in clean_pages:
        mrn, ts = body.split(",")
        clean.page(mrn, parse_hl7_time(ts), None)
    clean_score = clean.score()
    print(f"stream: {len(msgs)} messages, {sum(r.aki for r in rows)} AKIs, {args.days} days; "
          f"prepared in {time.monotonic() - t0:.1f}s", flush=True)

    duration = args.minutes * 60.0
    speed = args.days * DAY / duration
    outage_at = rng.uniform(0.2, 0.7) * duration
    faults = PagerFaults(fail_rate=0.05, hang_rate=0.005, hang_seconds=60.0,
                         outage=(outage_at, outage_at + 20.0), seed=args.seed)
    events = sorted([(rng.uniform(5.0, 0.9 * duration), "kill") for _ in range(args.kills)]
                    + [(rng.uniform(5.0, 0.9 * duration), "term") for _ in range(args.terms)]
                    + [(rng.uniform(5.0, 0.9 * duration), "disconnect")
                       for _ in range(args.disconnects)])
    print(f"speed x{speed:.0f} ({duration / 60:.1f} min); faults: {args.kills} kill -9, "
          f"{args.terms} SIGTERM, {args.disconnects} disconnects; pager: 5% 500, 0.5% hang, "
          f"outage {outage_at:.0f}-{outage_at + 20:.0f}s", flush=True)

    state = work / "state"
    logs: list[str] = []
    samples: list[tuple[float, int, int, int]] = []   # (seconds, rss KiB, position, pid)
    term_exits: list[float] = []
    bad_exits: list[int] = []
    h = HospitalThread(msgs, rows, resume_state=work / "resume.json", speed=speed,
                       pager_faults=faults)
    proc = None
    try:
        h.start()
        proc = start_service(h, state, history, args.detector, logs)
        started = start = time.monotonic()
        next_sample = start
        last_print = start
        while not h.hospital.done:
            now = time.monotonic()
            elapsed = now - start
            if elapsed > duration * 3 + 300:
                print("giving up: the stream did not finish", flush=True)
                break
            if now >= next_sample:
                rss = rss_kib(proc.pid) if now - started >= WARMUP else None
                if rss is not None and proc.poll() is None:
                    samples.append((elapsed, rss, h.hospital.next, proc.pid))
                next_sample += SAMPLE_EVERY
            if now - last_print >= 30:
                last_print = now
                rss = samples[-1][1] if samples else 0
                print(f"  {elapsed:6.0f}s  position {h.hospital.next:>6}/{len(msgs)}  "
                      f"RSS {rss / 1024:6.1f} MiB  {h.score().summary()}", flush=True)
            while events and events[0][0] <= elapsed:
                _, kind = events.pop(0)
                if kind == "disconnect":
                    drop_connection(h)
                    continue
                if kind == "kill":
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
                    time.sleep(rng.uniform(0.0, 2.0))
                else:
                    t = time.monotonic()
                    if terminate(proc) != 0:
                        bad_exits.append(proc.returncode)
                    term_exits.append(time.monotonic() - t)
                proc = start_service(h, state, history, args.detector, logs)
                started = time.monotonic()
            time.sleep(0.05)
        stream_seconds = time.monotonic() - start
        deadline = time.monotonic() + 120
        while pending(state) != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        left = pending(state)
        t = time.monotonic()
        if terminate(proc, 15) != 0:
            bad_exits.append(proc.returncode)
        term_exits.append(time.monotonic() - t)
        live = h.score()
        hosp = h.hospital
        report(samples, live, clean_score, len(clean_pages), hosp, stream_seconds, left,
               term_exits, bad_exits, args)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        h.stop()
        for name in logs:
            try:
                os.unlink(name)
            except OSError:
                pass
    return 0


def report(samples, live, clean, clean_pages, hosp, stream_seconds, left, term_exits,
           bad_exits, args) -> None:
    print(f"\nstream done in {stream_seconds:.0f}s; pages still pending at the end: {left}")
    print("RSS over time (MiB; every ~30 s):")
    step = max(1, int(30 / SAMPLE_EVERY))
    for sec, rss, pos, pid in samples[::step]:
        print(f"  {sec:6.0f}s  {rss / 1024:6.1f}  position {pos:>6}  pid {pid}")
    q = max(1, len(samples) // 4)
    first = [s[1] for s in samples[:q]]
    last = [s[1] for s in samples[-q:]]
    print(f"RSS first quarter mean {mean(first) / 1024:.1f} MiB, last quarter mean "
          f"{mean(last) / 1024:.1f} MiB ({(mean(last) / mean(first) - 1) * 100:+.1f}%), "
          f"max {max(s[1] for s in samples) / 1024:.1f} MiB over {len(samples)} samples, "
          f"{len({s[3] for s in samples})} processes")
    # The longest-lived process: its own growth, unaffected by restarts.
    by_pid: dict[int, list[tuple[float, int]]] = {}
    for sec, rss, _, pid in samples:
        by_pid.setdefault(pid, []).append((sec, rss))
    longest = max(by_pid.values(), key=len)
    print(f"longest-lived process: {longest[0][1] / 1024:.1f} MiB at {longest[0][0]:.0f}s -> "
          f"{longest[-1][1] / 1024:.1f} MiB at {longest[-1][0]:.0f}s")
    print(f"hospital: {hosp.connections} connections, drops {dict(hosp.drops)}, "
          f"{hosp.acked} ACKs, {hosp.nacked} NACKs; pager responses "
          f"{dict(hosp.pager.responses)}")
    print(f"SIGTERM exits: {', '.join(f'{s:.2f}s' for s in term_exits)}; "
          f"non-zero exit codes: {bad_exits or 'none'}")
    distinct = live.tp + live.fp
    print(f"soak  ({args.detector}): {live.summary()}; {live.pages} deliveries of {distinct} "
          f"pages ({live.pages - distinct} duplicates)")
    print(f"clean ({args.detector}): {clean.summary()}; {clean_pages} pages")
    same = (live.tp, live.fp, live.fn) == (clean.tp, clean.fp, clean.fn)
    print("score equals the clean run" if same else "SCORE DIFFERS FROM THE CLEAN RUN")


if __name__ == "__main__":
    sys.exit(main())
