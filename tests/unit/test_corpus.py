"""The corpus (tests/corpus/): realistic messages of several trusts' dialects, each with the
decision expected.toml says for it; ordered scenarios through Ingest on a real SQLite state;
and every field the service reads cross-checked against an independent HL7 parser."""

from __future__ import annotations

import logging
import tomllib
from functools import cache
from pathlib import Path

import hl7 as oracle
import pytest

from aki_alert import hl7
from aki_alert.detect.nhs import NhsDetector
from aki_alert.hl7 import encoding
from aki_alert.ingest import Ingest
from aki_alert.store.sqlite import SqliteStore
from aki_alert.timeutil import parse_hl7_time

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
MANIFEST = tomllib.loads((CORPUS / "expected.toml").read_text("utf-8"))
CASES = MANIFEST["case"]
SCENARIOS = MANIFEST["scenario"]
FILES = sorted(p.name for p in CORPUS.glob("*.hl7"))


@cache
def profile(name: str) -> hl7.FeedProfile:
    if name == "default":
        return hl7.DEFAULT_PROFILE
    return hl7.load_profile(str(CORPUS / "profiles" / f"{name}.toml"))


def raw(file: str) -> bytes:
    return (CORPUS / file).read_bytes()


# Files the corpus holds in other bytes than plain UTF-8 text from MSH on, on purpose.
BOM = "bom-utf8.hl7"                # a UTF-8 byte-order mark before MSH
LATIN1 = "msh18-latin1.hl7"         # ISO 8859-1, as its MSH-18 declares


def text(file: str) -> str:
    """A corpus file's message text, read as the service reads it (hl7.parse)."""
    data = raw(file)
    return data.decode("latin-1") if file == LATIN1 else data.decode("utf-8").lstrip("\ufeff")


def case_id(case: dict) -> str:
    return f"{case['file'].removesuffix('.hl7')}[{case['profile']}]"


def test_every_message_has_an_expected_decision_and_every_case_a_message():
    named = {c["file"] for c in CASES}
    assert sorted(named) == FILES
    for s in SCENARIOS:
        assert {step["file"] for step in s["steps"]} <= set(FILES), s["name"]


def test_messages_are_single_carriage_return_separated_messages():
    for file in FILES:
        data = raw(file)
        assert data.startswith(b"\xef\xbb\xbfMSH" if file == BOM else b"MSH"), file
        assert data.endswith(b"\r"), file
        # Nothing MLLP could not carry: no start byte, no end marker (a lone 0x1C may be).
        assert b"\n" not in data and b"\x0b" not in data and b"\x1c\r" not in data, file
        if file != LATIN1:
            data.decode("utf-8")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parse(case):
    prof = profile(case["profile"])
    if "error" in case:
        with pytest.raises(hl7.HL7Error) as e:
            hl7.parse(raw(case["file"]), prof)
        assert case["error"] in str(e.value)
        assert case["decision"] == "dead"
        return
    event = hl7.parse(raw(case["file"]), prof)
    assert type(event).__name__ == case["event"]
    if "mrn" in case:
        assert event.mrn == case["mrn"]
    if "old" in case:
        assert event.old == case["old"]
    if "name" in case:
        assert (event.name, event.sex or "") == (case["name"], case["sex"])
    if "kind" in case:
        assert event.kind == case["kind"]
    if isinstance(event, hl7.Result):
        got = [(o.time_text, None if o.value is None else round(o.value, 2), o.status,
                o.comparator) for o in event.observations]
        assert got == [(o["time_text"], o.get("value"), o["status"], o["comparator"])
                       for o in case["observations"]]
    if isinstance(event, (hl7.Result, hl7.Other)):
        assert [(n.code, n.suspicious) for n in event.notes] == [
            (n["code"], n["suspicious"]) for n in case.get("notes", [])]


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(str(tmp_path / "state.db"))
    yield s
    s.close()


def journal_since(store, after: int) -> list[tuple]:
    return store.db.execute("SELECT id, status, reason, mrn FROM journal WHERE id > ? "
                            "ORDER BY id", (after,)).fetchall()


def newest(store, table: str) -> int:
    return store.db.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_decision_on_an_empty_state(case, store, caplog):
    ing = Ingest(store, NhsDetector(), profile=profile(case["profile"]))
    with caplog.at_level(logging.WARNING, logger="aki_alert.ingest"):
        ing.apply(raw(case["file"]), 0.0)
    (_, status, reason, _), = journal_since(store, 0)
    assert status == case["decision"]
    if status == "dead":
        assert case["error"] in reason
    for note in case.get("notes", []):
        # A creatinine-like code the profile does not name is never silent.
        warned = any(f": {note['code']} " in r.getMessage() and "creatinine-like" in r.getMessage()
                     for r in caplog.records)
        assert warned == note["suspicious"], note


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s["name"])
def test_scenario(scenario, store):
    ing = Ingest(store, NhsDetector(), profile=profile(scenario["profile"]))
    for n, step in enumerate(scenario["steps"], 1):
        at = f"{scenario['name']} step {n} ({step['file']})"
        last_journal, last_page = newest(store, "journal"), newest(store, "outbox")
        pages = ing.apply(raw(step["file"]), 0.0)
        rows = journal_since(store, last_journal)
        if step["status"] == "redelivered":
            assert rows == [], at
        else:
            (_, status, reason, mrn), = rows
            assert status == step["status"], (at, reason)
            if "reason" in step:
                assert step["reason"] in (reason or ""), at
            if "mrn" in step:
                assert mrn == step["mrn"], at
        queued = [r[0] for r in store.db.execute(
            "SELECT body FROM outbox WHERE id > ? ORDER BY id", (last_page,))]
        assert queued == step["pages"], at
        assert [p.body for p in pages] == queued, at      # every page queued is dispatched
    results = store.db.execute("SELECT mrn, time, value FROM results ORDER BY mrn, time").fetchall()
    assert [(m, t, round(v, 6)) for m, t, v in results] == [
        (m, parse_hl7_time(t), round(v, 6)) for m, t, v in scenario["results"]]


# --- the independent parser -------------------------------------------------------------
#
# python-hl7 (`oracle`) splits a message by the separators its MSH declares, as ours does, and
# decodes escapes with `Message.unescape`. The two differ by design where HL7 leaves room:
# - `\Xhh\`: the oracle makes one character per byte (Latin-1); ours decodes the bytes as
#   UTF-8, the feed's encoding (MSH-18 `UNICODE UTF-8`), so `\XC3A9\` is "é" for us and "Ã©"
#   for it. Compared after re-reading the oracle's characters as the bytes they stand for.
# - formatting escapes (`\H\`, `\N\` become "_" there, nothing here; `\.br\` "\r" there, "\n"
#   here) and unknown or unterminated sequences (dropped there, kept as sent here): no field
#   the service reads carries one in the corpus; they are compared only where both agree.
# - ours strips the whitespace around a component it reads; compared after stripping.

# (segment, field number as HL7 counts it, what the service reads of it)
READ = [
    ("MSH", 7, "first"), ("MSH", 9, "components"), ("MSH", 10, "raw"), ("MSH", 12, "first"),
    ("PID", 3, "repetitions"), ("PID", 5, "components"), ("PID", 7, "first"),
    ("PID", 8, "first"), ("OBR", 7, "first"), ("OBX", 2, "first"),
    ("OBX", 3, "components"), ("OBX", 5, "repetitions"), ("OBX", 6, "first"),
    ("OBX", 11, "first"), ("OBX", 14, "first"), ("MRG", 1, "repetitions"),
]


def oracle_field(seg, n: int):
    return seg[n] if n < len(seg) else None


def oracle_reps(f) -> list[list[str]]:
    """A python-hl7 field as its repetitions' components, as sent (subcomponents joined)."""
    if f is None:
        return [[""]]
    if all(isinstance(x, str) for x in f):       # no repetition nor component separator
        return [[str(f)]]
    return [[rep] if isinstance(rep, str) else [str(c) for c in rep] for rep in f]


def oracle_text(m, text: str) -> str:
    """The oracle's unescaped text, `\\Xhh\\` bytes re-read as UTF-8 (see above)."""
    out = m.unescape(text)
    if f"{m.esc}X" in text:
        out = out.encode("latin-1", "replace").decode("utf-8", "replace")
    return out.strip()


@pytest.mark.parametrize("file", FILES)
def test_fields_the_service_reads_agree_with_an_independent_parser(file):
    message = text(file)
    seps = encoding.separators(message)
    ours = encoding.segments(message, seps.field)
    m = oracle.parse(message)
    # python-hl7's order: segment, field, repetition, component, subcomponent.
    assert (m.separators, m.esc) == (
        "\r" + seps.field + seps.repetition + seps.component + seps.subcomponent, seps.escape)
    assert [s[0] for s in ours] == [str(s[0]) for s in m]
    for mine, theirs in zip(ours, m, strict=True):
        for name, n, how in READ:
            if mine[0] != name:
                continue
            # MSH-1 is the field separator itself: our split MSH starts at MSH-2.
            value = encoding.field(mine, n - 1 if name == "MSH" else n)
            o = oracle_reps(oracle_field(theirs, n))
            at = f"{file} {name}-{n}"
            reps = [rep.split(seps.component) for rep in value.split(seps.repetition)]
            assert reps == o, at                                   # split alike, as sent
            unescaped = [[encoding.unescape(c, seps).strip() for c in rep] for rep in reps]
            assert unescaped == [[oracle_text(m, c) for c in rep] for rep in o], at
            # And what the service's own readers return is that.
            if how == "first":
                assert encoding.first(value, seps) == unescaped[0][0], at
            elif how == "components":
                assert encoding.components(value, seps) == unescaped[0], at
            elif how == "raw":
                assert value == str(oracle_field(theirs, n) or ""), at


def test_the_cross_check_sees_escapes_and_unusual_separators():
    # Not vacuous: the corpus holds every escape the service decodes in a field it reads, and
    # messages whose separators are not the defaults.
    texts = [text(f) for f in FILES]
    for esc in ("\\T\\", "\\S\\", "\\F\\", "\\X", "%T%"):
        assert any(esc in t for t in texts), esc
    assert {t[3:8] for t in texts} >= {"|^~\\&", "#^~\\&", "|$~\\&", "!@*%#"}
