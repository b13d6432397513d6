"""How the model holds up under shift, and what the unlabelled drift signal says.

    python benchmarks/bench_shift.py [--model MODEL_DIR] [--data DIR]

1. The shift table of `aki-alert evaluate --shifts` (src/aki_alert/shifts.py) on
   DIR/test.csv and DIR/cohort-2025/test.csv: the model and the NHS algorithm, live-style and at
   the labelled point.
2. The drift signal (src/aki_alert/drift.py) as the service would export it: each labelled
   stream of DIR (dev-stream/, dev-year/: history + messages, judged in order as the service
   does, `offline.py`) through the model, with the window's PSI of score and creatinine and its
   positive rate, the largest once the window has filled; and the strict F3 of its pages
   against aki.csv. Then the same streams with every creatinine × 1.15 (a new assay from the
   first message on) and, for the cohorts, the test rows judged in order: the PSI the alert
   rule (> 0.25) should and should not see.

Skips (prints why) when DIR lacks the data.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

from aki_alert import shifts
from aki_alert.detect.model import load_model
from aki_alert.drift import DriftMonitor, histogram, psi
from aki_alert.train import model_scores, read_cohort

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
_OBX_VALUE = re.compile(rb"(OBX\|[^\r]*?\|CREATININE\|[^|]*\|)([0-9.]+)")


class Watching:
    """A detector that counts every result it judges into a drift monitor, as ingest does,
    and keeps the largest PSI and the positive rate once the window is full."""

    def __init__(self, det, monitor: DriftMonitor | None) -> None:
        self.det, self.monitor = det, monitor
        self.name, self.version = det.name, det.version
        self.worst = {"psi_score": 0.0, "psi_creatinine": 0.0}
        self.rates: list[float] = []
        self.n = 0

    def judge(self, patient, time, value):
        j = self.det.judge(patient, time, value)
        self.n += 1
        if self.monitor is None:
            return j
        self.monitor.observe([value], [j.score], [j.positive])
        full = self.monitor.max_slots * self.monitor.per_slot
        if self.n >= full and self.n % self.monitor.per_slot == 0:
            s = self.monitor.snapshot()
            for k in self.worst:
                self.worst[k] = max(self.worst[k], s[k])
            self.rates.append(s["positive_rate"])
        return j


def scaled(messages: list[bytes], factor: float) -> list[bytes]:
    """The messages with every creatinine value × factor (a new assay from the start)."""
    return [
        _OBX_VALUE.sub(lambda m: m.group(1) + f"{float(m.group(2)) * factor:.2f}".encode(), raw)
        for raw in messages
    ]


def stream_figures(det, d: Path, factor: float = 1.0) -> str:
    from aki_alert.hospital.datafiles import read_messages
    from aki_alert.offline import offline_pages
    from aki_alert.timeutil import format_hl7_time, parse_csv_time

    msgs = read_messages(d / "messages.mllp")
    if factor != 1.0:
        msgs = scaled(msgs, factor)
    w = Watching(det, DriftMonitor(det.reference) if det.reference is not None else None)
    pages = set(offline_pages(str(d / "history.csv"), msgs, w))
    with open(d / "aki.csv", newline="") as f:
        akis = {
            f"{r['mrn']},{format_hl7_time(parse_csv_time(r['date']))}"
            for r in csv.DictReader(f)
            if r["aki"] == "y"
        }
    tp, fp, fn = len(pages & akis), len(pages - akis), len(akis - pages)
    f3 = 10 * tp / (10 * tp + 9 * fn + fp) if tp + fn + fp else 1.0
    rate = f"{min(w.rates):.4f}–{max(w.rates):.4f}" if w.rates else "–"
    name = d.name + ("" if factor == 1.0 else f", creatinine ×{factor}")
    worst = (
        f"{w.worst['psi_score']:.3f} | {w.worst['psi_creatinine']:.3f}"
        if w.monitor is not None
        else "– | –"
    )
    return f"| {name} | {w.n} | {worst} | {rate} | {f3:.4f} (TP {tp}, FP {fp}, FN {fn}) |"


def cohort_psi(det, name: str, rows) -> str:
    """PSI of a cohort's results judged in order (every row as one stream) against training."""
    ref = det.reference
    scores = model_scores(det, rows)
    values = [v for r in rows for v in r.values]
    s_hist = histogram(scores, ref["score"]["bounds"])
    c_hist = histogram(values, ref["creatinine"]["bounds"])
    rate = sum(s >= det.threshold for s in scores) / len(scores)
    return (
        f"| {name} | {len(scores)} | {psi(s_hist, ref['score']['fractions']):.3f} "
        f"| {psi(c_hist, ref['creatinine']['fractions']):.3f} | {rate:.4f} | – |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", help="artifact directory (default: the shipped model)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--no-streams", action="store_true", help="skip the dev streams (slow)")
    args = ap.parse_args()
    test = args.data / "test.csv"
    if not test.exists():
        print(f"skipped: no {test}")
        return
    shifts.run(Path(args.model) if args.model else None, test, shifts.default_cohort(test))
    det = load_model(args.model)
    ref = det.reference
    print(
        f"\ndrift signal of model {det.version} (expected positive rate "
        f"{ref['positive_rate']:.4f}; the alert: PSI > 0.25, rate outside 0.4–2×)"
        if ref is not None
        else f"\nmodel {det.version} stores no training reference: strict F3 of the streams only"
    )
    print("| stream | results | max PSI score | max PSI creatinine | positive rate | strict F3 |")
    print("|---|---|---|---|---|---|")
    if ref is not None:
        cohort = shifts.default_cohort(test)
        for name, path in (("test.csv", test), ("cohort-2025/test.csv", cohort)):
            if path is not None:
                print(cohort_psi(det, name, read_cohort(path)[0]), flush=True)
        rows = shifts.assay(read_cohort(test)[0], lambda v: v * 1.15, False)
        print(cohort_psi(det, "test.csv, creatinine ×1.15", rows), flush=True)
    if args.no_streams:
        return
    for sub in ("dev-stream", "dev-year"):
        d = args.data / sub
        if (d / "messages.mllp").exists():
            print(stream_figures(det, d), flush=True)
            print(stream_figures(det, d, 1.15), flush=True)


if __name__ == "__main__":
    main()
