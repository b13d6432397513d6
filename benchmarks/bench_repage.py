"""Re-paging within an episode (repage.py): tuned on labelled training streams, reported on all.

    python -m benchmarks.bench_repage            # before/after of the shipped policies
    python -m benchmarks.bench_repage --tune     # search the policies again, write repage.json

Every stream is replayed exactly as the hospital scores it (contract §5, strict: one AKI time
per patient, every other distinct page a false positive, a late right page still a true
positive): the recorded streams (`dev-stream`, `dev-year`: history, then every message) through
the offline reference (offline.py, the service's decisions), and the labelled cohorts
(`training.csv`, `test.csv`) as streams: each row a patient, its results sent in order, its AKI
time the last result of an `aki=y` row.

Tuning maximises strict F3 on the training streams only, pooled (TP, FP and FN summed over
dev-year and the training cohort): a miss costs 9 and a false page 1 wherever it happens. The
test cohort and dev-stream are only reported. Ties go to the policy adding the fewest pages,
then the simplest. The detectors are the shipped default model (models/DEFAULT) and the NHS
algorithm; re-run `--tune` after the model changes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from aki_alert.detect import Detector, Patient
from aki_alert.detect.model import load_model
from aki_alert.detect.nhs import NhsDetector
from aki_alert.hospital.datafiles import read_aki, read_messages
from aki_alert.hospital.scoring import f3
from aki_alert.offline import Event, Positive, decide, offline_events
from aki_alert.repage import NEVER, PARAMS_PATH, Policy, load_policies
from aki_alert.timeutil import DAY, format_hl7_time
from aki_alert.train import read_cohort, sha256_file

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
TRAINING = ("dev-year", "training cohort")       # what the policies are tuned on
REPORTED = ("dev-stream", "dev-year", "training cohort", "test cohort")


@dataclass(slots=True)
class Stream:
    name: str
    events: list[Event]
    aki: dict[str, int]        # the AKI time of each AKI patient
    sources: list[Path]


def recorded_stream(name: str, detector: Detector) -> Stream:
    d = DATA / name
    events = offline_events(str(d / "history.csv"), read_messages(d / "messages.mllp"), detector)
    rows = read_aki(d / "aki.csv")
    return Stream(name, events, {r.mrn: r.time for r in rows if r.aki},
                  [d / "history.csv", d / "messages.mllp", d / "aki.csv"])


def cohort_stream(name: str, path: Path, detector: Detector) -> Stream:
    """A labelled cohort as a stream: each row a patient (MRN: its row number), results in
    order, demographics as admitted (age at the row's last result)."""
    rows, _ = read_cohort(path)
    events: list[Event] = []
    aki: dict[str, int] = {}
    for n, r in enumerate(rows):
        mrn = f"{n + 1}"
        birth = r.times[-1] - int(r.age * 365.25 * DAY)
        p = Patient(mrn, [], [], birth, r.sex)
        for t, v in zip(r.times, r.values, strict=True):
            if p.times and p.times[-1] == t:
                continue                  # a repeat of a sample time: the service ignores it
            j = detector.judge(p, t, v)
            if j.positive:
                events.append(Positive(mrn, t, format_hl7_time(t), v, j, list(p.times),
                                       list(p.values)))
            p.times.append(t)
            p.values.append(v)
        if r.aki:
            aki[mrn] = r.times[-1]
    return Stream(name, events, aki, [path])


def load_streams(detector: Detector) -> dict[str, Stream]:
    return {
        "dev-stream": recorded_stream("dev-stream", detector),
        "dev-year": recorded_stream("dev-year", detector),
        "training cohort": cohort_stream("training cohort", DATA / "training.csv", detector),
        "test cohort": cohort_stream("test cohort", DATA / "test.csv", detector),
    }


@dataclass(frozen=True, slots=True)
class Counts:
    tp: int
    fp: int
    fn: int
    repages: int = 0          # pages a policy added, right or wrong
    repages_tp: int = 0

    @property
    def f3(self) -> float:
        return f3(self.tp, self.fp, self.fn)

    def __add__(self, o: "Counts") -> "Counts":
        return Counts(self.tp + o.tp, self.fp + o.fp, self.fn + o.fn,
                      self.repages + o.repages, self.repages_tp + o.repages_tp)


def score(pages: list[str], aki: dict[str, int], before: set[str] = frozenset()) -> Counts:
    """Strict: a distinct page at a patient's AKI time is a TP, any other a FP; an AKI never
    paged at its time a FN. `before`: the pages without re-paging (to count those added)."""
    distinct = set(pages)
    hits = {b for b in distinct if _is_aki(b, aki)}
    added = distinct - before
    return Counts(len(hits), len(distinct) - len(hits), len(aki) - len(hits), len(added),
                  sum(1 for b in added if b in hits))


def _is_aki(body: str, aki: dict[str, int]) -> bool:
    mrn, _, ts = body.partition(",")
    t = aki.get(mrn)
    return t is not None and format_hl7_time(t) == ts


class Evaluator:
    """Scores policies on a stream fast: only patients with two positives or more can be
    re-paged, so the others' pages are decided once."""

    def __init__(self, stream: Stream) -> None:
        by_patient: dict[str, list[Event]] = defaultdict(list)
        for e in stream.events:
            by_patient[e.mrn].append(e)
        multi = {m for m, es in by_patient.items()
                 if sum(isinstance(e, Positive) for e in es) > 1}
        self.stream = stream
        self.fixed = decide([e for e in stream.events if e.mrn not in multi], NEVER)
        self.varying = [e for e in stream.events if e.mrn in multi]
        self.before = set(self.fixed) | set(decide(self.varying, NEVER))

    def pages(self, policy: Policy) -> list[str]:
        return self.fixed + decide(self.varying, policy)

    def counts(self, policy: Policy) -> Counts:
        return score(self.pages(policy), self.stream.aki, self.before)


def grid(detector_name: str):
    """The policies searched: gates × triggers (a trigger None is off)."""
    hours = (0.0, 6.0, 24.0, 72.0)
    stage_gains = (None, 1, 2)
    ratios = (None, 1.5, 2.0, 3.0)
    nadirs = (None, 1.5, 2.0, 3.0)
    if detector_name == "model":
        min_scores = (None, 0.9, 0.99)
        score_gains = (None, 0.2, 0.3, 0.4)
    else:       # the NHS score is its stage: a score gain is a stage gain
        min_scores = (None, 2.0, 3.0)
        score_gains = (None,)
    for h, s, g, r, n, sg in itertools.product(hours, min_scores, stage_gains, ratios, nadirs,
                                               score_gains):
        p = Policy(h, s, g, r, n, sg)
        if p.enabled or p == NEVER:
            yield p


def complexity(p: Policy) -> int:
    return sum(x is not None for x in (p.min_score, p.stage_gain, p.value_ratio, p.nadir_rise,
                                       p.score_gain)) + (p.min_hours > 0)


def tune(streams: dict[str, Stream], detector_name: str, log=print) -> tuple[Policy, Counts]:
    """The policy of best pooled strict F3 on the training streams; ties: fewest added pages,
    then the simplest, then the most conservative (the later in the grid's order)."""
    evaluators = [Evaluator(streams[n]) for n in TRAINING]
    best: tuple | None = None
    n = 0
    for p in grid(detector_name):
        n += 1
        c = sum((e.counts(p) for e in evaluators), Counts(0, 0, 0))
        key = (round(c.f3, 9), -c.repages, -complexity(p))
        if best is None or key >= best[0]:
            best = (key, p, c)
    assert best is not None
    varying = ", ".join(str(len(e.varying)) for e in evaluators)
    log(f"  searched {n} policies for {detector_name} on {' + '.join(TRAINING)} "
        f"(events that a policy can change: {varying})")
    return best[1], best[2]


def table(detector_label: str, streams: dict[str, Stream], policy: Policy) -> list[str]:
    out = []
    for name in REPORTED:
        ev = Evaluator(streams[name])
        b, a = ev.counts(NEVER), ev.counts(policy)
        role = "tuned on" if name in TRAINING else "held out"
        out.append(f"| {detector_label} | {name} ({role}) | {b.tp} / {b.fp} / {b.fn} | "
                   f"{b.f3:.4f} | {a.tp} / {a.fp} / {a.fn} | {a.f3:.4f} | "
                   f"{a.repages} ({a.repages_tp} right, {a.repages - a.repages_tp} false) |")
    return out


HEAD = ("| detector | stream | before TP / FP / FN | before F3 | after TP / FP / FN | after F3 "
        "| re-pages added |\n|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_repage",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--tune", action="store_true",
                    help="search the policies on the training streams and write repage.json")
    args = ap.parse_args(argv if argv is not None else sys.argv[1:])
    if not (DATA / "dev-year" / "messages.mllp").exists():
        print(f"  skipped: no labelled streams in {DATA}")
        return 0
    policies = load_policies()
    detectors = {"model": load_model(), "nhs": NhsDetector()}
    tuned: dict[str, dict] = {}
    rows = []
    for name, det in detectors.items():
        t0 = time.perf_counter()
        streams = load_streams(det)
        label = f"{name} {det.version}"
        print(f"  {label}: streams judged in {time.perf_counter() - t0:.1f} s", flush=True)
        if args.tune:
            policy, c = tune(streams, name)
            print(f"  {label}: {policy} → pooled training TP {c.tp} FP {c.fp} FN {c.fn} "
                  f"F3 {c.f3:.4f}", flush=True)
            tuned[name] = {"policy": policy, "version": det.version, "counts": c}
        else:
            policy = policies.get(name, NEVER)
        rows += table(label, streams, policy)
    if args.tune:
        write_params(tuned)
    print("\nre-paging within an episode: before (one page per episode) and after (the "
          f"{'newly tuned' if args.tune else 'shipped'} policy), strict scoring")
    print(HEAD)
    print("\n".join(rows))
    return 0


def write_params(tuned: dict[str, dict]) -> None:
    doc = {
        "policies": {name: t["policy"].to_dict() for name, t in tuned.items()},
        "tuning": {
            "command": "python -m benchmarks.bench_repage --tune",
            "objective": "strict F3 of TP/FP/FN pooled over " + " + ".join(TRAINING),
            "sources": {str(p.relative_to(DATA)): sha256_file(p)[:16]
                        for p in _training_sources()},
            "detectors": {name: {"version": t["version"],
                                 "training_counts": _counts_dict(t["counts"])}
                          for name, t in tuned.items()},
        },
    }
    PARAMS_PATH.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"  wrote {PARAMS_PATH}")


def _training_sources() -> list[Path]:
    d = DATA / "dev-year"
    return [d / "history.csv", d / "messages.mllp", d / "aki.csv", DATA / "training.csv"]


def _counts_dict(c: Counts) -> dict:
    return {"tp": c.tp, "fp": c.fp, "fn": c.fn, "f3": round(c.f3, 6), "repages": c.repages,
            "repages_right": c.repages_tp}


if __name__ == "__main__":
    sys.exit(main())
