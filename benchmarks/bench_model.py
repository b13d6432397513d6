"""Per-result cost of the model detector against the NHS algorithm, measured in the same run.

    python benchmarks/bench_model.py [--model MODEL_DIR] [--data COHORT.csv]

Judges the last result of every cohort row (../shared/data/test.csv when present, else a
synthetic cohort) many times over and reports p50/p99 in µs of: the NHS algorithm alone; the
model's features + inference (what `ModelDetector.probability` does); and the model's full
`judge` (features + inference + the NHS explanation fields). Ratios are to the NHS cost.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from pathlib import Path

from aki_alert.detect import Patient
from aki_alert.detect.model import load_model
from aki_alert.detect.nhs import nhs_stage
from aki_alert.timeutil import DAY, HOUR

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "test.csv"


def synthetic_cases(n: int, seed: int = 1) -> list[tuple[Patient, int, float, float]]:
    rnd = random.Random(seed)
    cases = []
    for i in range(n):
        k = rnd.randint(0, 25)
        t0 = 1_700_000_000 - rnd.randint(0, 300) * DAY
        times = sorted(t0 + rnd.randint(0, 300 * 24) * HOUR for _ in range(k))
        base = rnd.uniform(50, 150)
        values = [base * rnd.uniform(0.8, 1.2) for _ in times]
        birth = t0 - rnd.randint(18, 95) * 365 * DAY
        cases.append(
            (
                Patient(str(i), times, values, birth, rnd.choice("MF")),
                1_700_100_000,
                base * rnd.uniform(0.8, 2.5),
                60.0,
            )
        )
    return cases


def cohort_cases(path: Path) -> list[tuple[Patient, int, float, float]]:
    from aki_alert.train import read_cohort

    rows, _ = read_cohort(path)
    cases = []
    for i, r in enumerate(rows):
        birth = r.times[-1] - int(r.age * 365.25 * DAY) if r.age is not None else None
        cases.append(
            (
                Patient(str(i), r.times[:-1], r.values[:-1], birth, r.sex),
                r.times[-1],
                r.values[-1],
                r.age,
            )
        )
    return cases


def timings(fn, cases, repeat: int) -> list[float]:
    """Per-call times in µs of fn(case), every case `repeat` times, GC off while timing."""
    out = []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(repeat):
            for case in cases:
                t = clock()
                fn(case)
                out.append((clock() - t) / 1000.0)
    finally:
        gc.enable()
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", help="artifact directory (default: the shipped model)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    det = load_model(args.model)
    cases = cohort_cases(args.data) if args.data.exists() else synthetic_cases(5000)
    source = args.data.name if args.data.exists() else "synthetic cohort"

    def nhs(c):
        nhs_stage(c[0].times, c[0].values, c[1], c[2])

    def model(c):
        det.probability(c[0].times, c[0].values, c[1], c[2], c[3], c[0].sex)

    def judge(c):
        det.judge(c[0], c[1], c[2])

    for fn in (nhs, model, judge):  # warm-up
        timings(fn, cases[:500], 1)
    rows = [
        ("NHS algorithm (nhs_stage)", timings(nhs, cases, args.repeat)),
        ("model: features + inference", timings(model, cases, args.repeat)),
        ("model: judge (+ NHS explanation)", timings(judge, cases, args.repeat)),
    ]
    base50, base99 = pct(rows[0][1], 0.5), pct(rows[0][1], 0.99)
    print(f"model {det.version}; {len(cases)} results from {source} x {args.repeat}")
    print(f"{'per result':36s} {'p50 µs':>8s} {'p99 µs':>8s} {'p50 ×NHS':>9s} {'p99 ×NHS':>9s}")
    for name, xs in rows:
        p50, p99 = pct(xs, 0.5), pct(xs, 0.99)
        print(f"{name:36s} {p50:8.2f} {p99:8.2f} {p50 / base50:9.2f} {p99 / base99:9.2f}")


if __name__ == "__main__":
    main()
