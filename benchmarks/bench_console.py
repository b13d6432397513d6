"""Does the console slow the page path? Per-message ingest cost with and without it hammered.

`Ingest.apply` over a generated stream into a real SQLite state file (WAL, durability
"process", as `aki-alert serve` runs it), timed per message, in two conditions run alternately
on fresh copies of the same state:

- baseline: nothing else running;
- hammered: the console serving that state from its own process (as `serve` runs it), with a
  thread of this process requesting its alerts page and patient pages over HTTP back to back
  (the worst case: no human clicks this fast);
- browsing: the same at 5 pages/s (a few people using the console at once).

Prints the mean and p99 per-message cost of each, their ratio, and the console's request rate.
Each condition is run `--rounds` times; the median round is reported.

    python -m benchmarks.bench_console [--days 60] [--patients 6000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from aki_alert.console.process import spawn
from aki_alert.detect.nhs import NhsDetector
from aki_alert.history import ImportSummary, read_history
from aki_alert.hospital.datafiles import write_hospital
from aki_alert.hospital.generator import generate
from aki_alert.ingest import Ingest
from aki_alert.store.sqlite import SqliteStore

TOKEN = "bench-token"


class Hammer(threading.Thread):
    """Requests the alerts page and patient pages, one after another, until stopped."""

    def __init__(self, port: int, mrns: list[str], interval: float = 0.0) -> None:
        super().__init__(name="console-hammer", daemon=True)
        self.port, self.mrns, self.interval = port, mrns, interval
        self.stop = threading.Event()
        self.requests = 0
        self.errors = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        paths = itertools.cycle(itertools.chain.from_iterable(
            ("/", f"/patients/{m}") for m in self.mrns))
        while not self.stop.is_set():
            try:
                conn.request("GET", next(paths), headers={"Authorization": f"Bearer {TOKEN}"})
                r = conn.getresponse()
                r.read()
                self.requests += 1
                if r.status != 200:
                    self.errors += 1
            except OSError:
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            if self.interval:
                self.stop.wait(self.interval)
        conn.close()


def run_once(template: Path, work: Path, msgs: list[bytes], mrns: list[str],
             console: float | None):
    """`console`: None for no console, else the hammer's pause between requests (0: none)."""
    state = work / "state.db"
    for ext in ("", "-wal", "-shm"):
        Path(str(state) + ext).unlink(missing_ok=True)
    shutil.copy(template, state)
    store = SqliteStore(str(state))
    ingest = Ingest(store, NhsDetector())
    server = hammer = None
    if console is not None:
        server, url = spawn("127.0.0.1", 0, TOKEN, str(state), 0)
        hammer = Hammer(int(url.rsplit(":", 1)[1]), mrns, console)
        hammer.start()
        time.sleep(0.2)       # the hammer is running before the first message
    costs = []
    perf = time.perf_counter
    if hammer is not None:
        hammer.requests = hammer.errors = 0     # count from the first message on
    started = perf()
    for m in msgs:
        t = perf()
        ingest.apply(m, t)
        costs.append(perf() - t)
    elapsed = perf() - started
    rate = None
    if hammer is not None:
        hammer.stop.set()
        hammer.join(10)
        rate = (hammer.requests / elapsed, hammer.errors)
        server.terminate()
        server.wait(10)
    store.close()
    costs.sort()
    return statistics.fmean(costs), costs[int(len(costs) * 0.99)], rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--patients", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        g = generate(days=args.days, patients=args.patients, seed=5, cohort_size=10)
        paths = write_hospital(d / "hospital", g)
        template = d / "template.db"
        s = SqliteStore(str(template))
        s.import_results(read_history(str(paths["history"]), ImportSummary()))
        s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        s.close()
        # Patients the hammer asks for: those with the most history (the heaviest charts).
        mrns = sorted(g.history, key=lambda m: -len(g.history[m]))[:20]
        work = d / "work"
        work.mkdir()
        conditions = {"baseline (no console)": None, "console, browsing (5 pages/s)": 0.2,
                      "console, hammered (back to back)": 0.0}
        runs: dict[str, list] = {name: [] for name in conditions}
        for _ in range(args.rounds):
            for name, pause in conditions.items():
                runs[name].append(run_once(template, work, g.messages, mrns, pause))
    print(f"{len(g.messages)} messages, {args.days} days, {args.patients} patients, "
          f"detector nhs, {args.rounds} rounds (median by mean shown)")
    print(f"{'per-message Ingest.apply':36}{'mean':>10}{'p99':>10}{'ratio':>8}{'console':>14}")
    base = None
    for name, results in runs.items():
        mean, p99, rate = sorted(results)[len(results) // 2]
        base = mean if base is None else base
        served = "" if rate is None else f"{rate[0]:.0f} pages/s" + (
            f", {rate[1]} errors" if rate[1] else "")
        print(f"{name:36}{mean * 1e6:>8.1f}µs{p99 * 1e6:>8.1f}µs{mean / base:>8.2f}{served:>14}")


if __name__ == "__main__":
    main()
