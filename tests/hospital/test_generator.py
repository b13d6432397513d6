"""The generator: determinism, the contract's formats (§3, §6), and the labels' meaning."""

from __future__ import annotations

import csv
import re
import statistics
from collections import Counter

import pytest

from aki_alert import hl7
from aki_alert.detect.nhs import nhs_stage
from aki_alert.history import ImportSummary, read_history
from aki_alert.hospital.cli import cmd_generate
from aki_alert.hospital.datafiles import read_aki, read_messages, write_hospital
from aki_alert.hospital.generator import STREAM_START, expected_baseline, generate
from aki_alert.timeutil import DAY, parse_csv_time, parse_hl7_time

DAYS, PATIENTS, SEED = 45, 4000, 5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("hospital")
    h = generate(DAYS, PATIENTS, SEED, cohort_size=600)
    write_hospital(out, h, junk=True, seed=SEED)
    return out, h


def test_same_seed_same_bytes_other_seed_differs(tmp_path, files):
    out, _ = files
    again = tmp_path / "again"
    write_hospital(again, generate(DAYS, PATIENTS, SEED, cohort_size=600), junk=True, seed=SEED)
    for name in ("messages.mllp", "history.csv", "aki.csv", "training.csv"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    other = generate(DAYS, PATIENTS, SEED + 1, cohort_size=10)
    assert other.messages != files[1].messages


MSH = r"MSH\|\^~\\&\|SIMULATION\|SOUTH RIVERSIDE\|\|\|\d{14}\|\|"
PATTERNS = {
    "ADT^A01": re.compile(
        MSH + r"ADT\^A01\|\|\|2\.5\rPID\|1\|\|\d{3,9}\|\|[A-Z]+ [A-Z]+\|\|\d{8}\|[MF]\r"),
    "ADT^A03": re.compile(MSH + r"ADT\^A03\|\|\|2\.5\rPID\|1\|\|\d{3,9}\r"),
    "ORU^R01": re.compile(MSH + r"ORU\^R01\|\|\|2\.5\rPID\|1\|\|\d{3,9}\rOBR\|1\|\|\|\|\|\|\d{14}\r"
                          r"OBX\|1\|SN\|CREATININE\|\|\d+\.\d+(e[-+]\d+)?\r"),
}


def test_messages_are_exactly_as_the_contract_shows(files):
    out, h = files
    messages = read_messages(out / "messages.mllp")
    assert messages == h.messages
    kinds = Counter()
    for m in messages:
        text = m.decode("ascii")
        kind = text.split("|")[8]
        kinds[kind] += 1
        assert PATTERNS[kind].fullmatch(text), text
        assert isinstance(hl7.parse(m), (hl7.Admission, hl7.Discharge, hl7.Result))
    assert 0.68 <= kinds["ORU^R01"] / len(messages) <= 0.78   # about 73% results


def test_stream_starts_with_everyone_in_hospital_then_time_order(files):
    _, h = files
    times = [parse_hl7_time(m.split(b"|")[6].decode()) for m in h.messages]
    kinds = [m.split(b"|")[8] for m in h.messages]
    n_initial = sum(1 for t in times if t < STREAM_START)
    assert n_initial > 10
    assert all(k == b"ADT^A01" for k in kinds[:n_initial])
    assert times == sorted(times)
    assert all(STREAM_START <= t < STREAM_START + DAYS * DAY for t in times[n_initial:])
    # Hospital rhythm: most results are drawn between 05:00 and 19:00.
    hours = [t % DAY // 3600 for t, k in zip(times, kinds, strict=True) if k == b"ORU^R01"]
    assert sum(5 <= x < 19 for x in hours) / len(hours) > 0.8


def test_aki_csv_one_time_per_aki_patient_at_a_stream_result(files):
    out, h = files
    with open(out / "aki.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["mrn", "date", "aki", "nhs"]
    assert {r["aki"] for r in rows} <= {"y", "n"} and {r["nhs"] for r in rows} <= {"y", "n"}
    akis = [r for r in read_aki(out / "aki.csv") if r.aki]
    assert len(akis) > 10
    assert len({r.mrn for r in akis}) == len(akis)
    results = {(m.split(b"\r")[1].split(b"|")[3].decode(),
                parse_hl7_time(m.split(b"\r")[2].split(b"|")[7].decode()))
               for m in h.messages if b"|ORU^R01|" in m}
    assert all((r.mrn, r.time) in results for r in akis)
    assert all(not r.aki and r.nhs for r in read_aki(out / "aki.csv") if not r.aki)


def test_nhs_column_is_the_simplified_nhs_algorithm_over_history_and_stream(files):
    out, h = files
    seen: dict[str, tuple[list[int], list[float]]] = {}
    for mrn, t, v in sorted(read_history(str(out / "history.csv"), ImportSummary()),
                            key=lambda r: r[1]):
        ts, vs = seen.setdefault(mrn, ([], []))
        if t not in ts:
            ts.append(t)
            vs.append(v)
    flagged = set()
    for m in h.messages:
        ev = hl7.parse(m)
        if isinstance(ev, hl7.Result):
            ts, vs = seen.setdefault(ev.mrn, ([], []))
            obs, = ev.observations
            if nhs_stage(ts, vs, obs.time, obs.value).stage >= 2:
                flagged.add((ev.mrn, obs.time))
            ts.append(obs.time)
            vs.append(obs.value)
    rows = read_aki(out / "aki.csv")
    for r in rows:
        assert r.nhs == ((r.mrn, r.time) in flagged)
    # Neither is trivially perfect: the NHS variant misses AKIs and flags noise.
    assert any(r.aki and not r.nhs for r in rows) and any(not r.aki for r in rows)


def test_history_parses_with_csv_and_the_projects_reader_despite_junk(files):
    out, h = files
    raw = (out / "history.csv").read_bytes()
    assert b"\r\n" in raw                                           # CRLF rows
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["mrn", "creatinine_date_0", "creatinine_result_0"]
    assert len({len(r) for r in rows}) == 1                         # padded
    mrns = [r[0] for r in rows[1:]]
    assert len(mrns) > len(set(mrns))                               # duplicate rows
    summary = ImportSummary()
    loaded = {(m, t, round(v, 2)) for m, t, v in read_history(str(out / "history.csv"), summary)}
    clean = {(m, t, round(v, 2)) for m, rs in h.history.items() for t, v in rs}
    assert loaded == clean                                          # junk adds, never alters
    assert summary.skipped["absurd values"] > 0 and summary.skipped["half-empty results"] > 0


def test_training_cohort_format_and_meaning(files):
    out, h = files
    with open(out / "training.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:5] == ["age", "sex", "aki", "creatinine_date_0", "creatinine_result_0"]
    body = rows[1:]
    assert {r[1] for r in body} == {"m", "f"} and {r[2] for r in body} == {"y", "n"}
    share = sum(r[2] == "y" for r in body) / len(body)
    assert 0.12 <= share <= 0.3
    for r in body:
        dates = [parse_csv_time(d) for d in r[3::2] if d]
        assert dates == sorted(dates) and len(dates) == len([v for v in r[4::2] if v])
    # Baselines depend on age and sex: first results of adult men above women, children lowest.
    first = {"m": [], "f": [], "child": []}
    for r in body:
        age, v = int(r[0]), float(r[4])
        first["child" if age < 12 else r[1]].append(v)
    med = {k: statistics.median(v) for k, v in first.items()}
    assert med["child"] < med["f"] < med["m"]
    assert expected_baseline(70, "M") > expected_baseline(30, "M") > expected_baseline(30, "F")


def test_generate_command_writes_the_four_files(tmp_path, capsys):
    class Args:
        days, patients, seed, cohort, junk, out = 3, 200, 1, 50, False, tmp_path
    assert cmd_generate(Args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "aki.csv", "history.csv", "messages.mllp", "training.csv"]
