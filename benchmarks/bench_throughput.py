"""Throughput and latency of `aki-alert serve` against the built-in hospital in fast mode.

Baseline, measured in the same run on the same generated stream: an acknowledge-only MLLP
client (the protocol's floor on this machine), before and after the service runs (this
machine's speed drifts; the ratio uses their mean and both are printed). Prints messages/s of
the service in each durability mode, the ratio, and the hospital's own latency measure (result
sent → page received) p50/p90/p99.

    python -m benchmarks.bench_throughput [--days 365] [--detector model]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aki_alert.hospital.process import terminate
from aki_alert.hospital import ackclient
from aki_alert.hospital.datafiles import read_aki, read_messages, write_hospital
from aki_alert.hospital.generator import generate
from aki_alert.hospital.simulator import HospitalThread


def floor_rate(msgs, rows) -> float:
    with HospitalThread(msgs, rows) as h:
        t = threading.Thread(target=ackclient.run,
                             args=("127.0.0.1", h.hospital.mllp_port, len(msgs)))
        t.start()
        h.wait_done(600)
        t.join()
        return h.hospital.rate()


def service_run(msgs, rows, history: Path, detector: str, state: Path, durability: str):
    with HospitalThread(msgs, rows) as h:
        env = dict(os.environ, MLLP_ADDRESS=f"127.0.0.1:{h.hospital.mllp_port}",
                   PAGER_ADDRESS=f"127.0.0.1:{h.hospital.pager_port}", STATE_DIR=str(state),
                   HISTORY_PATH=str(history), METRICS_PORT="0", DETECTOR=detector,
                   DURABILITY=durability, LOG_LEVEL="WARNING")
        proc = subprocess.Popen([sys.executable, "-m", "aki_alert", "serve"], env=env,
                                stderr=subprocess.DEVNULL)
        try:
            if not h.wait_done(900):
                raise SystemExit("the service did not finish the stream")
            time.sleep(1.0)   # the last pages
            return h.hospital.rate(), h.score()
        finally:
            terminate(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--detector", default="model")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_hospital(d, generate(days=args.days, patients=10_000, seed=1))
        msgs, rows = read_messages(d / "messages.mllp"), read_aki(d / "aki.csv")
        floors = [floor_rate(msgs, rows)]
        runs = {mode: service_run(msgs, rows, d / "history.csv", args.detector,
                                  d / f"state-{mode}", mode)
                for mode in ("process", "machine")}
        floors.append(floor_rate(msgs, rows))
    floor = sum(floors) / 2
    print(f"{len(msgs)} messages, {args.days} days, detector {args.detector}")
    print(f"{'':34}{'messages/s':>12}{'ratio':>8}   page latency p50 / p90 / p99")
    print(f"{'ack-only client (floor)':34}{floor:>12.0f}{1.0:>8.2f}   "
          f"(before {floors[0]:.0f}, after {floors[1]:.0f})")
    for mode, (rate, score) in runs.items():
        print(f"{'aki-alert serve, durability ' + mode:34}{rate:>12.0f}{rate / floor:>8.2f}   "
              f"{_ms(score.latency_p50)} / {_ms(score.latency_p90)} / {_ms(score.latency_p99)}")
    print(f"score (process): {runs['process'][1].summary()}")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.2f} ms"


if __name__ == "__main__":
    main()
