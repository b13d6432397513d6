"""Page delivery under a degraded or absent pager, through the real service.

A generated year (`--patients`, default 18,000: about 1,500 pages with the shipped model) is
replayed in fast mode by the built-in hospital to `aki-alert serve`, once per pager condition:

- **healthy** (the baseline, measured in the same run): every page accepted at once;
- **degraded**: the pager answers 500 to half its requests and hangs one in ten for 12 s
  (`PagerFaults(fail_rate=0.5, hang_rate=0.1, hang_seconds=12)`, seeded);
- **down**: the pager answers nothing (`--outage-kind`, default `hang`; also `503`, `refuse`)
  from the hospital's start for `--outage` seconds (default 60: a compressed outage; 600 for
  the issue's ten minutes), so every page of the year waits for its return.

For each: the hospital's own page latency (AKI result sent → its page accepted) p50 / p90 /
p99, the score (it must equal the healthy run's), pages accepted twice by the pager (hedges; the
hospital counts a repeated body once), pages left undelivered in the outbox, and the service's
own attempt counters (`/metrics`: attempts by kind, circuit openings). For the outage: how long
after the pager's return the last page was accepted (target: within 10 s). `--before DIR` adds a
healthy and a degraded run of another source tree (`DIR/src`, e.g. `git archive` of an earlier
commit's `src`: the policy this one replaces), in the same run. `--state-url URL` (a PostgreSQL
server's URL, e.g. postgresql://postgres@127.0.0.1:5432/postgres) keeps each run's state in a
fresh database of that server (STATE_URL: a commit per message, one replica), created and
dropped, instead of SQLite.

    python -m benchmarks.bench_pager [--patients 18000] [--outage 60] [--outage-kind hang]
                                     [--before DIR] [--only healthy,degraded,down]
                                     [--state-url URL]
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from aki_alert.hospital.datafiles import read_aki, read_messages, write_hospital
from aki_alert.hospital.generator import generate
from aki_alert.hospital.pager_server import PagerFaults
from aki_alert.hospital.process import terminate
from aki_alert.hospital.simulator import HospitalThread

from .bench_throughput import postgres_database

DEGRADED = PagerFaults(fail_rate=0.5, hang_rate=0.1, hang_seconds=12.0, seed=18)


@dataclass
class Run:
    name: str
    score: object                 # hospital.scoring.Score
    accepted: int                 # pages the pager accepted (repeats included)
    distinct: int
    undelivered: int              # outbox rows not 'delivered' at the end
    delivered_rows: int
    counters: dict[str, float]    # the service's page attempt counters
    after_return: float | None = None     # last page accepted, seconds after the pager returned
    waited: int = 0                       # pages accepted after the pager returned
    responses: dict | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    """The service's page-attempt series from /metrics (empty when it has none)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError:
        return {}
    found = {}
    for line in text.decode().splitlines():
        if line.startswith(("aki_page_attempts_total", "aki_pages_total",
                            "aki_pager_circuit_opens_total")):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def outbox(state: Path, url: str | None) -> tuple[int, int]:
    """(rows not delivered, rows delivered) of the service's outbox (SQLite in `state`, or the
    PostgreSQL database at `url`), read-only; (-1, 0) while it cannot be read."""
    try:
        if url is None:
            db = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=5)
        else:
            import psycopg

            db = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except Exception:  # noqa: BLE001 - sqlite3's or psycopg's: not there yet
        return -1, 0
    try:
        rows = dict(db.execute("SELECT status = 'delivered', count(*) FROM outbox "
                               "WHERE status != 'suppressed' GROUP BY 1").fetchall())
    except Exception:  # noqa: BLE001 - no outbox yet
        return -1, 0
    finally:
        db.close()
    return rows.get(0, 0), rows.get(1, 0)      # False == 0, True == 1: PostgreSQL's keys


def service_run(name: str, msgs, rows, history: Path, state: Path, detector: str,
                faults: PagerFaults | None, src: Path | None = None,
                settle: float = 120.0, state_url: str | None = None) -> Run:
    with HospitalThread(msgs, rows, pager_faults=faults) as h:
        pager = h.hospital.pager
        accepted_at: list[float] = []
        on_page = pager.on_page

        def noted(mrn, t, at):                 # in the hospital's thread
            accepted_at.append(time.monotonic())
            on_page(mrn, t, at)
        pager.on_page = noted
        metrics_port = free_port()
        env = dict(os.environ, MLLP_ADDRESS=f"127.0.0.1:{h.hospital.mllp_port}",
                   PAGER_ADDRESS=f"127.0.0.1:{h.hospital.pager_port}", STATE_DIR=str(state),
                   HISTORY_PATH=str(history), METRICS_PORT=str(metrics_port),
                   DETECTOR=detector, LOG_LEVEL="WARNING")
        if src is not None:
            env["PYTHONPATH"] = str(src)
        if state_url is not None:
            env["STATE_URL"] = state_url
        proc = subprocess.Popen([sys.executable, "-m", "aki_alert", "serve"], env=env,
                                stderr=subprocess.DEVNULL)
        try:
            if not h.wait_done(900):
                raise SystemExit(f"{name}: the service did not finish the stream")
            deadline = time.monotonic() + settle
            if faults is not None and faults.outage:
                deadline += max(0.0, pager._started + faults.outage[1] - time.monotonic())
            while time.monotonic() < deadline:
                pending, _ = outbox(state, state_url)
                if pending == 0:
                    break
                time.sleep(0.1)
            time.sleep(0.5)    # hedged repeats still on their way
            counters = scrape(metrics_port)
            score = h.score()
            pending, delivered = outbox(state, state_url)
            run = Run(name, score, score.pages, score.tp + score.fp, pending, delivered,
                      counters, responses=dict(pager.responses))
            if faults is not None and faults.outage:
                back = pager._started + faults.outage[1]
                after = [t - back for t in accepted_at if t >= back]
                run.after_return = max(after, default=None)
                run.waited = len(after)
            return run
        finally:
            terminate(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--patients", type=int, default=18_000)
    ap.add_argument("--detector", default="model")
    ap.add_argument("--outage", type=float, default=60.0,
                    help="seconds the pager is down from the hospital's start (default 60)")
    ap.add_argument("--outage-kind", default="hang", choices=("503", "hang", "refuse"))
    ap.add_argument("--before", type=Path,
                    help="a source tree (DIR/src) to run healthy and degraded too")
    ap.add_argument("--only", default="healthy,degraded,down")
    ap.add_argument("--data", type=Path, help="a generated hospital directory to reuse")
    ap.add_argument("--state-url", help="a PostgreSQL server: each run's state a fresh "
                    "database of it (default: SQLite)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        data = args.data or d
        if not (data / "messages.mllp").exists():
            write_hospital(data, generate(days=args.days, patients=args.patients, seed=1))
        msgs, rows = read_messages(data / "messages.mllp"), read_aki(data / "aki.csv")
        history = data / "history.csv"
        runs: list[Run] = []
        down = PagerFaults(outage=(0.0, args.outage), outage_kind=args.outage_kind, seed=19)
        plan = [("healthy", "healthy pager (baseline)", None, None),
                ("degraded", "degraded: 50% 500, 10% hung 12 s", DEGRADED, None)]
        if args.before:
            plan += [("healthy", f"healthy, before ({args.before.name})", None,
                      args.before / "src"),
                     ("degraded", f"degraded, before ({args.before.name})", DEGRADED,
                      args.before / "src")]
        plan.append(("down", f"down {args.outage:.0f} s ({args.outage_kind}), then healthy",
                     down, None))
        for i, (key, name, faults, src) in enumerate(plan):
            if key not in only:
                continue
            print(f"  running: {name}", flush=True)
            with (postgres_database(args.state_url) if args.state_url
                  else nullcontext(None)) as url:
                if args.state_url and url is None:
                    raise SystemExit(f"--state-url {args.state_url}: no server answers")
                runs.append(service_run(name, msgs, rows, history, d / f"state-{i}",
                                        args.detector, faults, src,
                                        settle=600.0 if src else 120.0, state_url=url))
    print(f"{len(msgs)} messages, {args.days} days, {args.patients} patients, "
          f"detector {args.detector}, state {'PostgreSQL' if args.state_url else 'SQLite'}")
    print(f"{'':44}{'latency p50 / p90 / p99':>32}{'pages':>7}{'repeats':>8}"
          f"{'undelivered':>12}   score")
    base = runs[0] if runs and runs[0].name.startswith("healthy") else None
    for r in runs:
        s = r.score
        ratio = ""
        if base is not None and r is not base and base.score.latency_p90:
            x = s.latency_p90 / base.score.latency_p90
            ratio = f"  (p90 {x:.{2 if x < 10 else 0}f}× the healthy)"
        same = "" if base is None or (s.tp, s.fp, s.fn) == (base.score.tp, base.score.fp,
                                                            base.score.fn) else "  DIFFERS"
        print(f"{r.name:44}{_ms(s.latency_p50)} / {_ms(s.latency_p90)} / "
              f"{_ms(s.latency_p99)}{r.distinct:>7}{r.accepted - r.distinct:>8}"
              f"{r.undelivered:>12}   TP {s.tp} FP {s.fp} FN {s.fn}{same}{ratio}")
    for r in runs:
        attempts = {k.split('"')[1]: int(v) for k, v in r.counters.items()
                    if k.startswith("aki_page_attempts_total")}
        opens = int(r.counters.get("aki_pager_circuit_opens_total", 0))
        line = f"  {r.name}: pager answers {r.responses}; service attempts {attempts or '-'}"
        line += f", circuit opened {opens}×" if attempts else ""
        if r.after_return is not None:
            line += (f"; {r.waited} pages accepted after the pager's return, the last "
                     f"{r.after_return:.2f} s after it (target ≤ 10 s)")
        print(line)


def _ms(x: float | None) -> str:
    if x is None:
        return f"{'-':>9}"
    return f"{x * 1000:>6.1f} ms" if x < 10 else f"{x:>7.1f} s"


if __name__ == "__main__":
    main()
