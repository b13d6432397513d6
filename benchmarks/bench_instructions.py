"""Instructions per message, counted by callgrind: the service's path against the baseline.

This machine's speed drifts by more than a change of a few per cent makes, so timings cannot
tell such a change from the noise; instruction counts repeat, whatever the other core does
(docs/performance.md, round 4). What is counted, each in a child process under
`valgrind --tool=callgrind` with PYTHONHASHSEED=0:

- **service**: what the service and its front do for each of the first N messages of the
  generated year (seed 1), over a copy of its imported history, both in one process, without
  the socket and the pipe between them: decode the frame, `Durable.accept` (message log, ACK:
  the front's part), the two metric updates, `Durable.settle` (journal, parse, state, judge,
  page decision: the service's), `Durable.flush` when due;
- **baseline**: an acknowledge-only client's work for the same messages (decode the frame,
  build the ACK), as in `bench_ingest`.

Each is run with N messages and with none, and the difference divided by N, so start-up and
the model's load drop out. The kernel's side of system calls (the log's `write`, SQLite's file
I/O) is not counted: `bench_throughput` measures the whole. Needs valgrind (skipped without).

    python -m benchmarks.bench_instructions [--messages 10000] [--days 365]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from aki_alert.detect.model import load_model
from aki_alert.hospital.datafiles import read_messages
from aki_alert.mllp import frame
from aki_alert.store.sqlite import SqliteStore

from .bench_ingest import Reader, ack_only, imported_state, service

ROOT = Path(__file__).resolve().parent.parent
MODES = ("baseline", "service")


def run_child(mode: str, n: int, tmp: Path) -> None:
    """The counted work (in the child process)."""
    messages = read_messages(tmp / "hospital" / "messages.mllp")[:n]
    if mode == "baseline":
        for m in messages:
            ack_only(m)
        return
    durable = service(tmp, f"child-{n}", SqliteStore(str(tmp / "imported.db")), "process",
                      load_model())
    # bench_ingest's reader loop: its per-message timing adds ~1 % to the count.
    Reader(durable).run([frame(m) for m in messages])
    durable.flush()


def instructions(mode: str, n: int, tmp: Path) -> int:
    """Instructions callgrind counts for a child doing `mode` over n messages."""
    out = tmp / f"callgrind.{mode}.{n}"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    sys.executable, "-m", "benchmarks.bench_instructions",
                    "--child", mode, str(n), str(tmp)],
                   cwd=ROOT, env=dict(os.environ, PYTHONHASHSEED="0"), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if found is None:
        raise SystemExit(f"no instruction total in {out}")
    return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--child", nargs=3, metavar=("MODE", "N", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, n, tmp = args.child
        run_child(mode, int(n), Path(tmp))
        return
    if shutil.which("valgrind") is None:
        print("valgrind not found: no instruction counts (apt-get install valgrind)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        messages, imported = imported_state(d, args.days)
        imported.close()
        n = min(args.messages, len(messages))
        per = {mode: (instructions(mode, n, d) - instructions(mode, 0, d)) / n for mode in MODES}
    print(f"{n} messages of a generated {args.days}-day year, callgrind, PYTHONHASHSEED=0")
    print(f"{'per message':40}{'instructions':>14}{'×baseline':>11}")
    for mode, label in (("baseline", "ack-only: decode + ACK (baseline)"),
                        ("service", "service: accept + settle (+ flush)")):
        print(f"{label:40}{per[mode]:>14,.0f}{per[mode] / per['baseline']:>11.1f}")


if __name__ == "__main__":
    main()
