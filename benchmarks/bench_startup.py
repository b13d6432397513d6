"""Start-up of `aki-alert serve`: process start to `/readyz` 200, beside the cost of starting
Python itself, measured in the same run on the same machine.

    python -m benchmarks.bench_startup [--repeat 5] [--history FILE] [--detector model]

Runs the service as a subprocess with METRICS_PORT set, MLLP_ADDRESS pointing at a socket of
this benchmark that accepts and idles, and PAGER_ADDRESS at a port nobody needs, and polls
/readyz every 2 ms. Cases:
  (a) fresh state: a 2,300-patient history to import (../shared/data/dev-stream/history.csv
      when present, else a generated one of the same size);
  (b) restart: the same state again, history already imported.
Baselines: `python -c pass` and `python -c "import aki_alert"` (process start to exit).
Target: (b) ≤ 1 s, model load included.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from aki_alert.hospital.process import terminate

REPO = Path(__file__).resolve().parents[1]
DEV_HISTORY = REPO.parent / "shared" / "data" / "dev-stream" / "history.csv"


def idle_mllp_server() -> tuple[socket.socket, int]:
    """A listening socket that accepts connections and never sends anything."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_seconds(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - t


def time_to_ready(state: Path, history: Path, mllp_port: int, detector: str,
                  timeout: float = 120.0) -> float:
    port = free_port()
    env = dict(os.environ, MLLP_ADDRESS=f"127.0.0.1:{mllp_port}", PAGER_ADDRESS="127.0.0.1:9",
               STATE_DIR=str(state), HISTORY_PATH=str(history), METRICS_PORT=str(port),
               DETECTOR=detector, LOG_LEVEL="WARNING")
    url = f"http://127.0.0.1:{port}/readyz"
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "aki_alert", "serve"], env=env,
                            stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t < timeout:
            if proc.poll() is not None:
                raise SystemExit(f"aki-alert serve exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.002)
        raise SystemExit(f"not ready within {timeout:.0f}s")
    finally:
        terminate(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--history", type=Path, help="history CSV (default: the dev stream's, "
                                                 "else a generated 2,300-patient one)")
    ap.add_argument("--detector", default="model", choices=("model", "nhs"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    srv, mllp_port = idle_mllp_server()
    try:
        history = args.history or (DEV_HISTORY if DEV_HISTORY.exists() else None)
        if history is None:
            from benchmarks.bench_import import generate

            history = tmp / "history.csv"
            generate(history, 2_300)
        source = "dev stream" if history == DEV_HISTORY else str(history)
        py = [sys.executable, "-c"]
        rows: list[tuple[str, list[float]]] = [
            ("python -c pass", [process_seconds(py + ["pass"]) for _ in range(args.repeat)]),
            ("python -c 'import aki_alert'",
             [process_seconds(py + ["import aki_alert"]) for _ in range(args.repeat)]),
        ]
        fresh, restart = [], []
        for i in range(args.repeat):
            state = tmp / f"state-{i}"
            fresh.append(time_to_ready(state, history, mllp_port, args.detector))
            restart.append(time_to_ready(state, history, mllp_port, args.detector))
        rows += [("(a) fresh state, import history", fresh),
                 ("(b) restart, history imported", restart)]
    finally:
        srv.close()
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(rows[0][1])
    print(f"history: {source}; detector {args.detector}; {args.repeat} runs each; "
          f"target (b) ≤ 1 s")
    print(f"{'process start → ready/exit':36s} {'median s':>9s} {'min s':>7s} {'max s':>7s} "
          f"{'×python':>8s}")
    for name, xs in rows:
        med = statistics.median(xs)
        print(f"{name:36s} {med:9.3f} {min(xs):7.3f} {max(xs):7.3f} {med / base:8.1f}")


if __name__ == "__main__":
    main()
