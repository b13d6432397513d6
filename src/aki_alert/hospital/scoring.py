"""How the hospital scores a service (contract §5, the strict version). Pure: no clock, no I/O.

Each AKI patient has one AKI time. A page `MRN,T` is a true positive when T is that time; every
other distinct `MRN,T` is a false positive (a repeated page counts once); every AKI never paged
at its exact time is a false negative, however late the right page comes. F3 weighs recall 3×.
Latency runs from the first time the AKI result was sent to the first time its page arrived;
pages for other times have no latency.

The live simulator and the offline `aki-alert score` both feed one `Scorer`, so they agree.
"""

from __future__ import annotations

from dataclasses import dataclass


def f3(tp: int, fp: int, fn: int) -> float:
    """F-beta with beta = 3: 10·TP / (10·TP + 9·FN + FP); 0 when there is nothing to score."""
    denominator = 10 * tp + 9 * fn + fp
    return 10 * tp / denominator if denominator else 0.0


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of ascending values; None when empty."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Score:
    tp: int
    fp: int
    fn: int
    f3: float
    nhs_f3: float            # the NHS reference on the same stream (aki.csv `nhs` column)
    latency_p50: float | None
    latency_p90: float | None
    latency_p99: float | None
    pages: int               # pages accepted (200), repeats included
    early_pages: int         # true positives that arrived before their result was sent

    def summary(self) -> str:
        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x * 1000:.1f} ms"
        return (f"TP {self.tp}  FP {self.fp}  FN {self.fn}  F3 {self.f3:.3f}"
                f" (NHS reference {self.nhs_f3:.3f})  latency p50 {ms(self.latency_p50)}"
                f"  p90 {ms(self.latency_p90)}  p99 {ms(self.latency_p99)}")


def nhs_reference_f3(rows) -> float:
    """F3 of the NHS variant from aki.csv rows: TP = aki y & nhs y, FN = aki y & nhs n,
    FP = aki n & nhs y (the NHS false positives)."""
    tp = sum(1 for r in rows if r.aki and r.nhs)
    fn = sum(1 for r in rows if r.aki and not r.nhs)
    fp = sum(1 for r in rows if not r.aki and r.nhs)
    return f3(tp, fp, fn)


class Scorer:
    """Fed sends and pages as they happen (times in seconds of any monotonic clock)."""

    def __init__(self, aki_rows) -> None:
        rows = list(aki_rows)
        self.aki_time: dict[str, int] = {r.mrn: r.time for r in rows if r.aki}
        self.nhs_f3 = nhs_reference_f3(rows)
        self._aki_sent: set[str] = set()                   # AKI results sent (by MRN)
        self._sent_at: dict[str, float] = {}               # ... and their first send time
        self._latest: dict[str, int] = {}                  # latest result time sent per MRN
        self._paged: set[tuple[str, int | None]] = set()       # distinct pages
        self.pages = 0
        self.early = 0
        self._latencies: list[float] = []

    def result_sent(self, mrn: str, time: int, at: float | None) -> None:
        """A result (MRN, OBR-7 time) went out at `at` (None: time unknown, e.g. resumed)."""
        if self._latest.get(mrn, time) <= time:
            self._latest[mrn] = time
        if self.aki_time.get(mrn) == time and mrn not in self._aki_sent:
            self._aki_sent.add(mrn)
            if at is not None:
                self._sent_at[mrn] = at

    def page(self, mrn: str, time: int | None, at: float | None) -> tuple[str, int | None]:
        """An accepted page. A page without a time means the patient's latest result sent so far
        (contract §4). Returns the (MRN, time) it was scored as."""
        if time is None:
            time = self._latest.get(mrn)
        key = (mrn, time)
        self.pages += 1
        if key in self._paged:
            return key
        self._paged.add(key)
        if time is not None and self.aki_time.get(mrn) == time:
            sent = self._sent_at.get(mrn)
            if sent is not None and at is not None:
                self._latencies.append(max(0.0, at - sent))
            elif mrn not in self._aki_sent:
                self.early += 1
        return key

    def score(self, only_sent: bool = False) -> Score:
        """The strict score. `only_sent` counts false negatives only for AKI results already
        sent (a live view mid-stream); at the end of the stream both views agree."""
        hit = {mrn for mrn, time in self._paged
               if time is not None and self.aki_time.get(mrn) == time}
        tp = len(hit)
        fp = len(self._paged) - tp
        due = self._aki_sent if only_sent else self.aki_time
        fn = sum(1 for mrn in due if mrn not in hit)
        lat = sorted(self._latencies)
        return Score(tp, fp, fn, f3(tp, fp, fn), self.nhs_f3,
                     percentile(lat, 50), percentile(lat, 90), percentile(lat, 99),
                     self.pages, self.early)
