"""The hospital's files, in the contract's formats (§3, §6): write what the generator made, read
what the simulator and the scorer need. File I/O only; the model lives in `generator.py`."""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path

from ..mllp import END, START, frame
from ..timeutil import DAY, format_csv_time, format_hl7_time, parse_csv_time, parse_hl7_time
from .generator import GeneratedHospital


@dataclass(frozen=True, slots=True)
class AkiRow:
    mrn: str
    time: int      # seconds (timeutil axis)
    aki: bool
    nhs: bool


# --- messages.mllp ---------------------------------------------------------------------------

def write_messages(path: Path, messages: list[bytes]) -> None:
    path.write_bytes(b"".join(frame(m) for m in messages))


def read_messages(path: Path) -> list[bytes]:
    """The payloads of an MLLP file (each `0x0B … 0x1C 0x0D`), in order."""
    data = path.read_bytes()
    out = []
    for chunk in data.split(END):
        if not chunk.strip():
            continue
        if not chunk.startswith(START):
            raise ValueError(f"{path}: an MLLP frame does not start with 0x0B")
        out.append(chunk[1:])
    return out


# --- history.csv and the labelled cohort -------------------------------------------------------

def _pairs(results: list[tuple[int, float]]) -> list[str]:
    cells = []
    for t, v in results:
        cells += [format_csv_time(t), f"{v:.2f}"]
    return cells


def _write_ragged(path: Path, head: list[str], rows: list[list[str]], pairs_from: int,
                  line_ends: list[str] | None = None) -> None:
    """Ragged rows padded with empty fields to the widest row, as the hospital's files are."""
    width = max([len(r) for r in rows] + [pairs_from + 2])
    n_pairs = (width - pairs_from + 1) // 2
    header = head + [f"creatinine_{k}_{i}" for i in range(n_pairs) for k in ("date", "result")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    text = [buf.getvalue()]
    for i, row in enumerate(rows):
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(row + [""] * (len(header) - len(row)))
        text.append(buf.getvalue() + (line_ends[i] if line_ends else "\n"))
    path.write_text("".join(text), newline="")


def write_history(path: Path, history: dict[str, list[tuple[int, float]]],
                  junk: bool = False, seed: int = 0) -> None:
    """`mrn,creatinine_date_0,creatinine_result_0,…`. With `junk`, a few rows get what real files
    have (contract §6): an empty cell, an absurd value, a CRLF line end, a duplicated row. Junk
    only adds cells and rows: dropping empty and absurd cells and duplicates gives the clean
    data."""
    rows = [[mrn] + _pairs(results) for mrn, results in history.items()]
    ends = ["\n"] * len(rows)
    if junk and rows:
        rng = random.Random(f"{seed}:junk")
        k = max(1, len(rows) // 200)
        for i in rng.sample(range(len(rows)), min(k, len(rows))):      # empty cells
            rows[i] += [format_csv_time(parse_csv_time(rows[i][1]) - DAY), ""] \
                if rng.random() < 0.5 else ["", f"{rng.uniform(50, 150):.2f}"]
        for i in rng.sample(range(len(rows)), min(k, len(rows))):      # absurd values
            rows[i] += [format_csv_time(parse_csv_time(rows[i][1]) - 2 * DAY),
                        rng.choice(("0", "-42.00", "999999.00"))]
        for i in rng.sample(range(len(rows)), min(k, len(rows))):      # CRLF line ends
            ends[i] = "\r\n"
        for i in sorted(rng.sample(range(len(rows)), min(k, len(rows))), reverse=True):  # dups
            rows.insert(i + 1, list(rows[i]))
            ends.insert(i + 1, ends[i])
    _write_ragged(path, ["mrn"], rows, 1, ends)


def write_cohort(path: Path, cohort: list[tuple[int, str, bool, list[tuple[int, float]]]]) -> None:
    """`age,sex,aki,creatinine_date_0,creatinine_result_0,…` (contract §6)."""
    rows = [[str(age), sex, "y" if aki else "n"] + _pairs(results)
            for age, sex, aki, results in cohort]
    _write_ragged(path, ["age", "sex", "aki"], rows, 3)


# --- aki.csv ---------------------------------------------------------------------------------

def write_aki(path: Path, rows: list[tuple[str, int, bool, bool]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["mrn", "date", "aki", "nhs"])
        for mrn, t, aki, nhs in rows:
            w.writerow([mrn, format_csv_time(t), "y" if aki else "n", "y" if nhs else "n"])


def read_aki(path: Path) -> list[AkiRow]:
    with path.open(newline="") as f:
        return [AkiRow(r["mrn"].strip(), parse_csv_time(r["date"]), r["aki"].strip() == "y",
                       r["nhs"].strip() == "y")
                for r in csv.DictReader(f)]


# --- pages files: one `MRN,YYYYMMDDHHMMSS` (or `MRN`) per line --------------------------------

def format_page(mrn: str, time: int | None) -> str:
    return mrn if time is None else f"{mrn},{format_hl7_time(time)}"


def read_pages(path: Path) -> list[tuple[str, int | None]]:
    pages = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            mrn, _, ts = line.partition(",")
            pages.append((mrn, parse_hl7_time(ts) if ts else None))
    return pages


def write_hospital(out: Path, h: GeneratedHospital, junk: bool = False, seed: int = 0) -> dict:
    """All four files into `out`; returns their paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.{ext}" for name, ext in
             (("messages", "mllp"), ("history", "csv"), ("aki", "csv"), ("training", "csv"))}
    write_messages(paths["messages"], h.messages)
    write_history(paths["history"], h.history, junk=junk, seed=seed)
    write_aki(paths["aki"], h.aki_rows)
    write_cohort(paths["training"], h.cohort)
    return paths
