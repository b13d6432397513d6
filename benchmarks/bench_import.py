"""History import at start-up: seconds, results/s and peak memory, beside reading the same CSV
with the csv module alone (the baseline), measured in the same run on the same machine.

    python -m benchmarks.bench_import [--large] [--dir DIR]

Generates history files in the contract's format (`mrn,creatinine_date_0,creatinine_result_0,…`,
ragged rows padded with empty fields, ~10 results per patient over 90 days, a little junk) of
100k patients / ~1M results, and with `--large` also 1M patients / ~10M results (~300 MB; the
files live in a temporary directory that is deleted afterwards). Each measurement runs in its
own child process and reports that process's peak resident memory (VmHWM), so no measurement
sees another's memory or warm caches in the interpreter.

Rows:
  csv.reader alone          the baseline: every row of the file through the csv module
  sha256 fingerprint        what start-up hashes before deciding to import
  read_history alone        parsing and validating every cell, no database
  import into fresh state   `startup._import`: SqliteStore + read_history + import_results
  re-import (merge)         the same file again into that state: adds nothing (idempotent)
  first start, empty state  what `serve` does before it is ready, on an empty SQLite state:
                            `startup.open_state` + `startup.reconcile` (fingerprint,
                            provenance, import), until reconcile returns
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADER_PAIRS = 26
EPOCH_2024 = 19_723  # days from 1970-01-01 to 2024-01-01


def _date_strings(days: int) -> list[str]:
    """`YYYY-MM-DD HH:MM:SS` for every minute of `days` days from 2024-01-01."""
    import datetime as dt

    start = dt.datetime(2024, 1, 1)
    day_text = [(start + dt.timedelta(days=d)).strftime("%Y-%m-%d ") for d in range(days)]
    minute_text = [f"{m // 60:02d}:{m % 60:02d}:00" for m in range(1440)]
    return [d + m for d in day_text for m in minute_text]


def generate(path: Path, patients: int, seed: int = 7) -> int:
    """Write a history file of `patients` rows; returns the number of result cells written.

    Deterministic for a seed. 1 row in 1,000 carries junk (an empty value, a non-number, an
    absurd value or a bad date) and 1 in 2,000 is a duplicate of the row before, as real
    exports do; MRNs are random 9-digit numbers in no particular order.
    """
    rnd = random.Random(seed)
    dates = _date_strings(90)
    values = [f"{v / 100:.2f}" for v in range(3000, 40001)]  # 30.00 .. 400.00 µmol/L
    n_dates, n_values = len(dates), len(values)
    header = "mrn," + ",".join(f"creatinine_date_{i},creatinine_result_{i}"
                               for i in range(HEADER_PAIRS))
    pad = [",," * k for k in range(HEADER_PAIRS + 1)]
    mrns = rnd.sample(range(100_000_000, 999_999_999), patients)
    cells = 0
    randrange, random_ = rnd.randrange, rnd.random
    with open(path, "w", newline="", buffering=1 << 20) as f:
        f.write(header + "\n")
        out: list[str] = []
        for mrn in mrns:
            k = 1 + randrange(19)  # 1..19 results, mean 10
            base = 6000 + randrange(6000)  # the patient's usual creatinine (index into values)
            ts = sorted(randrange(n_dates) for _ in range(k))
            parts = [str(mrn)]
            for t in ts:
                v = base + randrange(-1500, 1500)
                parts.append(dates[t])
                parts.append(values[v if 0 <= v < n_values else base])
            r = random_()
            if r < 0.001:
                j = 2 * (1 + randrange(k))
                parts[j] = ("", "abc", "-5", "99999")[randrange(4)]
            elif r < 0.0012:
                parts[1] = "2024-13-45 10:00:00"
            line = ",".join(parts) + pad[HEADER_PAIRS - k] + "\n"
            out.append(line)
            if random_() < 0.0005:
                out.append(line)
                cells += k
            cells += k
            if len(out) >= 10_000:
                f.write("".join(out))
                out.clear()
        f.write("".join(out))
    return cells


# --- the measured operations, each run in a child process ------------------------------------
def _op_csv(path: str, state: str) -> dict:
    import csv

    n = 0
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for row in csv.reader(f):
            n += len(row)
    return {"cells": n}


def _op_sha256(path: str, state: str) -> dict:
    from aki_alert.history import fingerprint

    return {"sha256": fingerprint(path)[:12]}


def _op_read(path: str, state: str) -> dict:
    from aki_alert.history import ImportSummary, read_history

    s = ImportSummary()
    n = sum(1 for _ in read_history(path, s))
    return {"results": n, "skipped": sum(s.skipped.values())}


def _op_import(path: str, state: str) -> dict:
    from aki_alert import startup
    from aki_alert.hl7 import DEFAULT_PROFILE
    from aki_alert.store.sqlite import SqliteStore

    store = SqliteStore(state)
    startup._import(store, path, "bench", DEFAULT_PROFILE)
    n = store.db.execute("SELECT count(*) FROM results").fetchone()[0]
    store.close()
    return {"results": n}


def _op_first_start(path: str, state: str) -> dict:
    import argparse

    from aki_alert import config, startup

    cfg = config.load(argparse.Namespace(), {
        "MLLP_ADDRESS": "hospital:8440", "PAGER_ADDRESS": "hospital:8441",
        "HISTORY_PATH": path, "STATE_DIR": state, "AKI_ENVIRONMENT": "bench"})
    store = startup.open_state(cfg)
    ok = startup.reconcile(store, cfg)
    n = store.db.execute("SELECT count(*) FROM results").fetchone()[0]
    store.close()
    return {"results": n, "history_ok": ok}


OPS = {"csv": _op_csv, "sha256": _op_sha256, "read": _op_read, "import": _op_import,
       "reimport": _op_import, "first_start": _op_first_start}


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, which (unlike ru_maxrss) does not inherit
    the parent's peak across fork + exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(op: str, path: str, state: str) -> None:
    started = time.perf_counter()
    if op == "generate":
        out = {"cells": generate(Path(path), int(state))}
    else:
        out = OPS[op](path, state)
    out["seconds"] = time.perf_counter() - started
    out["peak_mb"] = peak_rss_mb()
    print(json.dumps(out), flush=True)


def measure(op: str, path: Path, state: Path | int) -> dict:
    """Run one operation in a fresh interpreter: its wall time (inside the child, excluding
    interpreter start) and its peak RSS (the child's own, never the parent's)."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_import", "--child", op,
                           str(path), str(state)], stdout=subprocess.PIPE,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise SystemExit(f"{op} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout)


def run_size(tmp: Path, patients: int) -> None:
    path, state = tmp / f"history-{patients}.csv", tmp / f"state-{patients}.db"
    state_dir = tmp / f"first-start-{patients}"
    g = measure("generate", path, patients)
    cells = g["cells"]
    size_mb = path.stat().st_size / 1e6
    print(f"\n{patients:,} patients, {cells:,} result cells, {size_mb:,.0f} MB "
          f"(generated in {g['seconds']:.1f}s)", flush=True)
    rows = []
    for op, name in (("csv", "csv.reader alone (baseline)"), ("sha256", "sha256 fingerprint"),
                     ("read", "read_history alone"), ("import", "import into fresh state"),
                     ("reimport", "re-import (merge, adds 0)"),
                     ("first_start", "first start, empty state")):
        r = measure(op, path, state_dir if op == "first_start" else state)
        rows.append((name, r))
        extra = f"  → {r['results']:,} results in the state" if "results" in r and \
            op in ("import", "reimport", "first_start") else ""
        print(f"  {name:30s} {r['seconds']:7.2f}s{extra}", flush=True)
    base = rows[0][1]["seconds"]
    print(f"{'':2s}{'operation':30s} {'seconds':>8s} {'results/s':>11s} {'×csv':>6s} "
          f"{'peak MB':>8s}")
    for name, r in rows:
        print(f"  {name:30s} {r['seconds']:8.2f} {cells / r['seconds']:11,.0f} "
              f"{r['seconds'] / base:6.2f} {r['peak_mb']:8.0f}")
    for suffix in ("", "-wal", "-shm"):
        Path(str(state) + suffix).unlink(missing_ok=True)
    shutil.rmtree(state_dir, ignore_errors=True)
    path.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--large", action="store_true",
                    help="also 1M patients / ~10M results (needs ~1 GB of disk, a few minutes)")
    ap.add_argument("--only-large", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help="where to write the files (default: a temporary directory)")
    ap.add_argument("--child", nargs=3, metavar=("OP", "CSV", "STATE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = [1_000_000] if args.only_large else [100_000] + ([1_000_000] if args.large else [])
    tmp = Path(tempfile.mkdtemp(prefix="bench-import-", dir=args.dir))
    free_gb = shutil.disk_usage(tmp).free / 1e9
    need_gb = 2.0 if max(sizes) >= 1_000_000 else 0.3
    if free_gb < need_gb:
        shutil.rmtree(tmp)
        raise SystemExit(f"only {free_gb:.1f} GB free in {tmp}: need about {need_gb} GB")
    print(f"python {sys.version.split()[0]}; files in {tmp}; target: 10M results ≤ 60 s, "
          f"peak ≤ 1 GB")
    try:
        for patients in sizes:
            run_size(tmp, patients)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
