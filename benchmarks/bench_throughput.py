"""Throughput, latency and memory of `aki-alert serve` against the built-in hospital in fast mode.

Baseline, measured in the same run on the same generated stream: an acknowledge-only MLLP
client (`python -m aki_alert.hospital.ackclient`, a process of its own like the service: the
protocol's floor on this machine). This machine's speed drifts within a minute, so the floor is
measured before the first service run and after each, and each run's ratio uses the mean of
the two floors around it (all are printed). For each service run: messages/s and its ratio to
the floor, the hospital's own latency measure (result sent → page received) p50/p90/p99, and
the resident memory of the service and its front (front.py, the child process that holds the
connection) together, sampled from /proc: its peak (and the front's alone), and its mean in
each quarter of the stream (by messages acknowledged), so growth in the last three quarters
shows; and the CPU time per message of each while the stream runs, and the share of a core that
is (near 1: that process, not the protocol, is the limit). Runs: SQLite with durability
"process" (the default) and "machine", the listener (MLLP_LISTEN: the engine connects to the
service; a stop-and-wait MLLP sender, `aki_alert.hospital.sender`, in the place of the
hospital, on one connection like the hospital's; durability "process"), and PostgreSQL
(STATE_URL, a commit per message, in one process: no front) when a server answers at
AKI_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres; a database is
created and dropped).

    python -m benchmarks.bench_throughput [--days 365] [--detector model] [--no-postgres]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aki_alert.hospital.datafiles import read_aki, read_messages, write_hospital
from aki_alert.hospital.generator import generate
from aki_alert.hospital.process import terminate
from aki_alert.hospital.sender import MllpSender
from aki_alert.hospital.simulator import HospitalThread

POSTGRES_ADMIN_URL = os.environ.get("AKI_BENCH_POSTGRES_URL",
                                    "postgresql://postgres@127.0.0.1:5432/postgres")
SAMPLE_SECONDS = 0.05


def floor_rate(msgs, rows) -> float:
    with HospitalThread(msgs, rows) as h:
        client = subprocess.Popen(
            [sys.executable, "-m", "aki_alert.hospital.ackclient",
             f"127.0.0.1:{h.hospital.mllp_port}", "--count", str(len(msgs))],
            stderr=subprocess.DEVNULL)
        try:
            h.wait_done(600)
        finally:
            terminate(client)
        return h.hospital.rate()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The child processes of `pid` (the service's front)."""
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Memory:
    peak: float
    quarters: list[float]          # mean RSS (MiB) in each quarter of the stream
    front_peak: float              # the front's alone (0: none, as with STATE_URL)

    @property
    def growth(self) -> float:
        """From the second quarter's mean to the last's: the last three quarters."""
        return self.quarters[-1] / self.quarters[1] - 1


class Sampler(threading.Thread):
    """Samples the RSS of the service and its front against the hospital's progress until
    stopped, and their CPU time."""

    def __init__(self, pid: int, hospital, total: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.hospital, self.total = pid, hospital, total
        self.samples: list[tuple[int, float, float]] = []   # (acked, service RSS, front RSS)
        self.front: int | None = None
        self.cpu_start: tuple[int, float, float] | None = None    # (acked, CPU s, front CPU s)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_SECONDS):
            rss = rss_mib(self.pid)
            if rss is None or not self.hospital.acked:
                continue
            if self.front is None:
                self.front = next(iter(children(self.pid)), None)
            front_rss = rss_mib(self.front) if self.front is not None else None
            self.samples.append((self.hospital.acked, rss, front_rss or 0.0))
            if self.cpu_start is None:
                self.cpu_start = (self.hospital.acked, cpu_seconds(self.pid) or 0.0,
                                  self._front_cpu() or 0.0)

    def _front_cpu(self) -> float | None:
        return cpu_seconds(self.front) if self.front is not None else None

    def cpu_per_message(self) -> tuple[float, float] | None:
        """CPU seconds per message acknowledged since the first sample (start-up and the
        history import left out), of the service and of its front: when one nears the time
        between two messages, it, not the protocol, is the limit."""
        now, front = cpu_seconds(self.pid), self._front_cpu()
        if self.cpu_start is None or now is None or self.hospital.acked <= self.cpu_start[0]:
            return None
        n = self.hospital.acked - self.cpu_start[0]
        return ((now - self.cpu_start[1]) / n,
                (front - self.cpu_start[2]) / n if front is not None else 0.0)

    def memory(self) -> Memory | None:
        """The service's and its front's RSS together (the pod's processes)."""
        both = [(n, r + f) for n, r, f in self.samples]
        quarters = [[r for n, r in both if q * self.total < 4 * n <= (q + 1) * self.total]
                    for q in range(4)]
        if not all(quarters):
            return None
        return Memory(max(r for _, r in both), [sum(q) / len(q) for q in quarters],
                      max(f for _, _, f in self.samples))


def service_run(msgs, rows, history: Path, detector: str, state: Path, durability: str,
                state_url: str | None = None):
    with HospitalThread(msgs, rows) as h:
        env = dict(os.environ, MLLP_ADDRESS=f"127.0.0.1:{h.hospital.mllp_port}",
                   PAGER_ADDRESS=f"127.0.0.1:{h.hospital.pager_port}", STATE_DIR=str(state),
                   HISTORY_PATH=str(history), METRICS_PORT="0", DETECTOR=detector,
                   DURABILITY=durability, LOG_LEVEL="WARNING")
        if state_url:
            env["STATE_URL"] = state_url
        proc = subprocess.Popen([sys.executable, "-m", "aki_alert", "serve"], env=env,
                                stderr=subprocess.DEVNULL)
        sampler = Sampler(proc.pid, h.hospital, len(msgs))
        sampler.start()
        try:
            if not h.wait_done(900):
                raise SystemExit("the service did not finish the stream")
            cpu = sampler.cpu_per_message()
            time.sleep(1.0)   # the last pages
            return h.hospital.rate(), h.score(), sampler.memory(), cpu
        finally:
            sampler.done.set()
            terminate(proc)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listener_run(msgs, rows, history: Path, detector: str, state: Path):
    """The service listening (MLLP_LISTEN); a sender thread sends the stream stop-and-wait, as
    the hospital does in client mode; the hospital's pager takes the pages (its score counts
    every AKI: no latency, the hospital did not send the results)."""
    with HospitalThread(msgs, rows) as h:
        port = free_port()
        env = dict(os.environ, MLLP_ADDRESS="", MLLP_LISTEN=f"127.0.0.1:{port}",
                   PAGER_ADDRESS=f"127.0.0.1:{h.hospital.pager_port}", STATE_DIR=str(state),
                   HISTORY_PATH=str(history), METRICS_PORT="0", DETECTOR=detector,
                   DURABILITY="process", LOG_LEVEL="WARNING")
        proc = subprocess.Popen([sys.executable, "-m", "aki_alert", "serve"], env=env,
                                stderr=subprocess.DEVNULL)
        sender = MllpSender("127.0.0.1", port, msgs, connect_for=900)
        sampler = Sampler(proc.pid, sender, len(msgs))
        sampler.start()
        try:
            sender.start()
            if not sender.done.wait(900) or sender.acked < len(msgs):
                raise SystemExit("the service did not finish the stream (listener)")
            cpu = sampler.cpu_per_message()
            time.sleep(1.0)   # the last pages
            return sender.rate(), h.hospital.scorer.score(), sampler.memory(), cpu
        finally:
            sampler.done.set()
            terminate(proc)


@contextmanager
def postgres_database(admin_url: str = POSTGRES_ADMIN_URL):
    """A fresh database URL on the server of `admin_url`, dropped afterwards; None when no
    server answers."""
    try:
        import psycopg

        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except Exception as e:  # noqa: BLE001 - psycopg missing or no server: the row is skipped
        print(f"(no PostgreSQL run: {e})")
        yield None
        return
    name = f"aki_bench_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--detector", default="model")
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_hospital(d, generate(days=args.days, patients=10_000, seed=1))
        msgs, rows = read_messages(d / "messages.mllp"), read_aki(d / "aki.csv")
        history = d / "history.csv"
        # The floor is measured before the first run and after every run, and each run's ratio
        # uses the two floors around it: the machine's speed can change within a minute.
        floors = [floor_rate(msgs, rows)]
        runs = {}
        for mode in ("process", "machine"):
            runs[f"SQLite, durability {mode}"] = service_run(
                msgs, rows, history, args.detector, d / f"state-{mode}", mode)
            floors.append(floor_rate(msgs, rows))
        runs["listener (MLLP_LISTEN), durability process"] = listener_run(
            msgs, rows, history, args.detector, d / "state-listener")
        floors.append(floor_rate(msgs, rows))
        if not args.no_postgres:
            with postgres_database() as url:
                if url:
                    runs["PostgreSQL (commit per message)"] = service_run(
                        msgs, rows, history, args.detector, d / "state-pg", "process", url)
                    floors.append(floor_rate(msgs, rows))
    print(f"{len(msgs)} messages, {args.days} days, detector {args.detector}")
    print(f"{'':50}{'messages/s':>11}{'ratio':>7}   latency p50 / p90 / p99"
          f"      RSS peak, quarters (MiB)")
    print(f"{'ack-only client (floor), each measurement':50}"
          f"{' '.join(f'{f:.0f}' for f in floors):>11}")
    for i, (name, (rate, score, mem, cpu)) in enumerate(runs.items()):
        floor = (floors[i] + floors[i + 1]) / 2
        print(f"{'aki-alert serve, ' + name:50}{rate:>11.0f}{rate / floor:>7.2f}   "
              f"{_ms(score.latency_p50)} / {_ms(score.latency_p90)} / {_ms(score.latency_p99)}"
              f"   {_memory(mem)}   (floor {floors[i]:.0f} before, {floors[i + 1]:.0f} after;"
              f" {_cpu(cpu, rate)})")
    for name, (_, score, _, _) in runs.items():
        print(f"score ({name}): {score.summary()}")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.2f} ms"


def _cpu(per_message: tuple[float, float] | None, rate: float) -> str:
    if per_message is None:
        return "CPU -"
    service, front = per_message
    return (f"CPU {service * 1e6:.0f} + {front * 1e6:.0f} µs a message (service + front), "
            f"{service * rate:.2f} + {front * rate:.2f} of a core")


def _memory(m: Memory | None) -> str:
    if m is None:
        return "-"
    quarters = " ".join(f"{q:.1f}" for q in m.quarters)
    return f"{m.peak:.1f} (front {m.front_peak:.1f}); {quarters} (Q2→Q4 {m.growth:+.1%})"


if __name__ == "__main__":
    main()
