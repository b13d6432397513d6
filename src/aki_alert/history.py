"""Reading the history CSV: `mrn,creatinine_date_0,creatinine_result_0,…`, ragged rows.

Real files carry junk (empty cells, non-numbers, absurd values, CRLF, duplicate rows). Each
unusable cell pair or row is skipped and counted by reason; nothing here is fatal but a file
that cannot be opened or has no header.
"""

from __future__ import annotations

import csv
import hashlib
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import repeat
from dataclasses import dataclass, field

from .hl7 import MAX_CREATININE, MIN_CREATININE
from .patientid import is_valid_mrn
from .timeutil import parse_csv_time


@dataclass
class ImportSummary:
    rows: int = 0
    patients: int = 0
    results: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def describe(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        return (f"{self.rows} rows, {self.patients} patients, {self.results} results loaded; "
                f"skipped: {skipped}")


def fingerprint(path: str) -> str:
    """sha256 of the file's bytes: the identity of a history file in the state's provenance."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Distinct sample times kept parsed while reading one file. A real export has minute resolution
# over 90 days (at most 129,600 distinct times), so the cache holds them all; a file with more
# distinct times empties it whenever it fills, which bounds its memory (about 20 MB).
_TIME_CACHE_SIZE = 200_000

# `progress` is called about this often (in results read) during a long read.
PROGRESS_RESULTS = 1_000_000


def _check_header(path: str, header: list[str] | None) -> None:
    if not header or header[0].strip().lstrip("\ufeff").lower() != "mrn":
        raise ValueError(f"{path}: first line is not a history header starting with 'mrn'")


def check_header(path: str) -> None:
    """Raise ValueError, as read_history would, when the file does not start with a header."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        _check_header(path, next(csv.reader(f), None))


def read_history(path: str, summary: ImportSummary,
                 progress: Callable[[int], None] | None = None
                 ) -> Iterator[tuple[str, int, float]]:
    """Yield (mrn, time, value) for every usable result; count what was skipped in `summary`;
    call `progress` with the results read so far every PROGRESS_RESULTS or so.

    Repeated (mrn, time) pairs are yielded again: the store keeps the first and counts the rest.
    MRNs are kept as sent (only surrounding blanks are stripped); a row whose MRN the service
    cannot hold (`patientid.is_valid_mrn`) is skipped and counted.

    Each row first tries a fast path that handles a whole well-formed row at C speed (every
    date and value cell filled, then only empty padding; every date valid, every value a number
    in range); any row it does not accept in full goes through `_careful_pairs`, cell by cell,
    which decides and counts every case. The fast path accepts only rows on which the careful
    path would yield the same results and skip nothing.
    """
    patients: set[str] = set()
    times: dict[str, int] = {}
    get_time = times.get
    lo, hi = MIN_CREATININE, MAX_CREATININE
    isfinite = math.isfinite
    report_at = PROGRESS_RESULTS if progress else sys.maxsize
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        _check_header(path, next(reader, None))
        for row in reader:
            if not row:
                continue
            mrn = row[0].strip()
            if not mrn and not any(c.strip() for c in row):
                continue
            summary.rows += 1
            if summary.results >= report_at:   # one comparison a row, not a result
                report_at = summary.results + PROGRESS_RESULTS
                progress(summary.results)
            if not is_valid_mrn(mrn):
                summary.skipped["rows with a bad MRN"] += 1
                continue
            # --- fast path: cells 1..end-1 filled, an even number of them, only "" after
            try:
                end = row.index("", 1)
            except ValueError:
                end = len(row)
            if end > 1 and end % 2 == 1 and not any(row[end:]):
                dates = row[1:end:2]
                ts = list(map(get_time, dates))
                ok = None not in ts or _parse_missing(dates, ts, times)
                if ok:
                    try:
                        vs = list(map(float, row[2:end:2]))
                    except ValueError:
                        ok = False
                    else:
                        ok = isfinite(sum(vs)) and lo <= min(vs) and max(vs) <= hi
                if ok:
                    patients.add(mrn)
                    summary.results += len(vs)
                    yield from zip(repeat(mrn), ts, vs)
                    continue
            # --- careful path: every cell pair on its own, every skip counted
            kept = 0
            for t, v in _careful_pairs(row, summary):
                kept += 1
                yield mrn, t, v
            if kept:
                patients.add(mrn)
                summary.results += kept
    summary.patients = len(patients)


def _parse_missing(dates: list[str], ts: list[int | None], times: dict[str, int]) -> bool:
    """Fill the times the cache did not have (and cache them); False at the first bad date."""
    for j, t in enumerate(ts):
        if t is None:
            try:
                ts[j] = t = parse_csv_time(dates[j])
            except ValueError:
                return False
            if len(times) >= _TIME_CACHE_SIZE:
                times.clear()
            times[dates[j]] = t
    return True


def _careful_pairs(row: list[str], summary: ImportSummary) -> Iterator[tuple[int, float]]:
    """(time, value) of every usable cell pair of a row whose MRN is good, in order; counts in
    `summary` every pair or cell it skips and why."""
    for i in range(1, len(row) - 1, 2):
        date, value = row[i].strip(), row[i + 1].strip()
        if not date and not value:
            continue
        if not date or not value:
            summary.skipped["half-empty results"] += 1
            continue
        try:
            t = parse_csv_time(date)
        except ValueError:
            summary.skipped["bad dates"] += 1
            continue
        try:
            v = float(value)
        except ValueError:
            summary.skipped["non-numeric values"] += 1
            continue
        if not (math.isfinite(v) and MIN_CREATININE <= v <= MAX_CREATININE):
            summary.skipped["absurd values"] += 1
            continue
        yield t, v
    if len(row) % 2 == 0 and row[-1].strip():
        summary.skipped["dangling cells"] += 1
