"""Throughput and latency of `aki-alert serve` against the built-in hospital in fast mode.

Baseline, measured in the same run on the same generated stream: an acknowledge-only MLLP
client (the protocol's floor on this machine). Prints messages/s of each, their ratio, and the
hospital's own latency measure (result sent → page received) p50/p90/p99.

    python -m benchmarks.bench_throughput [--days 365] [--detector model]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

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


def service_run(msgs, rows, history: Path, detector: str, state: Path):
    with HospitalThread(msgs, rows) as h:
        env = dict(os.environ, MLLP_ADDRESS=f"127.0.0.1:{h.hospital.mllp_port}",
                   PAGER_ADDRESS=f"127.0.0.1:{h.hospital.pager_port}", STATE_DIR=str(state),
                   HISTORY_PATH=str(history), METRICS_PORT="0", DETECTOR=detector,
                   LOG_LEVEL="WARNING")
        proc = subprocess.Popen([sys.executable, "-m", "aki_alert", "serve"], env=env,
                                stderr=subprocess.DEVNULL)
        try:
            if not h.wait_done(900):
                raise SystemExit("the service did not finish the stream")
            time.sleep(1.0)   # the last pages
            return h.hospital.rate(), h.score()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


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
        floor = floor_rate(msgs, rows)
        rate, score = service_run(msgs, rows, d / "history.csv", args.detector, d / "state")
    print(f"{len(msgs)} messages, {args.days} days, detector {args.detector}")
    print(f"{'':28}{'messages/s':>12}{'ratio':>8}")
    print(f"{'ack-only client (floor)':28}{floor:>12.0f}{1.0:>8.2f}")
    print(f"{'aki-alert serve':28}{rate:>12.0f}{rate / floor:>8.2f}")
    ms = lambda x: "-" if x is None else f"{x * 1000:.2f} ms"  # noqa: E731
    print(f"page latency (hospital's measure): p50 {ms(score.latency_p50)}  "
          f"p90 {ms(score.latency_p90)}  p99 {ms(score.latency_p99)}")
    print(f"score: {score.summary()}")


if __name__ == "__main__":
    main()
