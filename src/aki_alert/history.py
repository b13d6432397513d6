"""Reading the history CSV: `mrn,creatinine_date_0,creatinine_result_0,…`, ragged rows.

Real files carry junk (empty cells, non-numbers, absurd values, CRLF, duplicate rows). Each
unusable cell pair or row is skipped and counted by reason; nothing here is fatal but a file
that cannot be opened or has no header.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from .hl7 import MAX_CREATININE, MIN_CREATININE
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


def read_history(path: str, summary: ImportSummary) -> Iterator[tuple[str, int, float]]:
    """Yield (mrn, time, value) for every usable result; count what was skipped in `summary`.

    Repeated (mrn, time) pairs are yielded again: the store keeps the first and counts the rest.
    """
    patients: set[str] = set()
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0].strip().lstrip("\ufeff").lower() != "mrn":
            raise ValueError(f"{path}: first line is not a history header starting with 'mrn'")
        for row in reader:
            if not row or not any(c.strip() for c in row):
                continue
            summary.rows += 1
            mrn = row[0].strip()
            if not (mrn.isascii() and mrn.isdigit()):
                summary.skipped["rows with a bad MRN"] += 1
                continue
            kept = 0
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
                kept += 1
                yield mrn, t, v
            if len(row) % 2 == 0 and row[-1].strip():
                summary.skipped["dangling cells"] += 1
            if kept:
                patients.add(mrn)
                summary.results += kept
    summary.patients = len(patients)
