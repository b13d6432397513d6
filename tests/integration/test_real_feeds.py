"""Real trusts' feeds end to end (issue 16): the real `aki-alert serve` process, a stand-in
hospital speaking MLLP stop-and-wait and an HTTP pager on 127.0.0.1, fed the messages a trust's
lab and PAS really send (LOINC and local codes, mg/dL, corrections, withdrawals, several OBRs,
NHS-number-first PID-3, alphanumeric and zero-padded numbers, merges). Each scenario is a
patient of its own; one service run per feed profile serves them all, on both state backends:

- `trust_run`: the default profile (the contract plus LOINC), with /metrics;
- `profiled_run`: a trust's profile naming its local code `CREA` and stripping leading zeros,
  with a `kill -9` and restart in the middle;
- `contract_run`: the assessment hospital's own dialect, paged exactly as offline.

Every message must be answered `MSA|AA` (echoing its MSH-10), and every patient paged exactly as
a clinician expects: the body `MRN,OBR-7` and the count. The count is the service's decisions
(its outbox, one row per page body); the pager must have received exactly those bodies, each at
least once: a delivery retried after a slow answer (the reader thread waits 0.25 s) may arrive
twice, which the hospital counts once, as it scores distinct `MRN,T`.
"""

from __future__ import annotations

import signal
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from aki_alert.detect.nhs import NhsDetector
from aki_alert.hospital import datafiles
from aki_alert.hospital.generator import generate
from aki_alert.offline import offline_pages

from .double import MllpHospital, Pager
from .service_process import POSTGRES_ADMIN_URL, Backend, State, log_text, start, stop, wait_for

pytestmark = pytest.mark.timeout(120)


# --- messages as a trust's systems send them -------------------------------------------------

def msh(kind: str, ts: str, control: str, version: str = "2.5.1", app: str = "WINPATH") -> str:
    return f"MSH|^~\\&|{app}|RVJ|AKI|RVJ|{ts}||{kind}|{control}|P|{version}|||AL|NE||UNICODE UTF-8"


def pid(cx: str, name: str = "TEST^PATIENT", dob: str = "19580412", sex: str = "F") -> str:
    return f"PID|1||{cx}||{name}||{dob}|{sex}"


def obr(n: int, sampled: str, reported: str) -> str:
    """A Urea & Electrolytes request, its `&` escaped (`\\T\\`) as HL7 requires."""
    fields = ["OBR", str(n), f"ORD{n}", f"LAB{n}", "UE^U\\T\\E^L", "", "", sampled] + [""] * 15
    fields[22] = reported        # OBR-22, results reported
    return "|".join(fields + ["", "CH", "F"])


def obx(n: int, ident: str, value: str, unit: str, status: str = "F", kind: str = "NM",
        reference: str = "", flag: str = "", observed: str = "") -> str:
    return (f"OBX|{n}|{kind}|{ident}||{value}|{unit}|{reference}|{flag}|||{status}|||"
            f"{observed}")


def message(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode()


def oru(cx: str, control: str, sent: str, *groups: tuple[str, list[str]]) -> bytes:
    """ORU^R01: the patient, then per request (OBR-7 sample time, its OBXs)."""
    segs = [msh("ORU^R01^ORU_R01", sent, control), pid(cx), "PV1|1|I|AMU^BAY2^BED4"]
    for n, (sampled, obxs) in enumerate(groups, 1):
        segs += [f"ORC|RE|ORD{n}|LAB{n}", obr(n, sampled, sent), *obxs]
    return message(*segs)


def creat_loinc_mass(value: str, status: str = "F") -> str:
    return obx(1, "2160-0^Creatinine [Mass/volume] in Serum or Plasma^LN", value, "mg/dL",
               status, reference="0.57-1.11")


def creat_loinc_moles(value: str, status: str = "F", unit: str = "umol/L") -> str:
    return obx(1, "14682-9^Creatinine [Moles/volume] in Serum or Plasma^LN", value, unit,
               status, reference="45-84")


def creat(value: str, status: str = "F") -> str:
    """The contract's own code, in µmol/L."""
    return obx(1, "CREATININE", value, "umol/L", status)


def creat_local(value: str, unit: str = "umol/L", status: str = "F") -> str:
    return obx(1, "CREA^Creatinine^L", value, unit, status, reference="45-84")


SODIUM = obx(2, "2951-2^Sodium [Moles/volume] in Serum or Plasma^LN", "139", "mmol/L",
             reference="133-146")
POTASSIUM = obx(3, "2823-3^Potassium [Moles/volume] in Serum or Plasma^LN", "4.4", "mmol/L")
EGFR = obx(4, "33914-3^eGFR (MDRD)^LN", ">90", "mL/min/1.73m2", kind="ST")


def mr(number: str) -> str:
    """PID-3 as an NHS trust sends it: the hospital number typed MR by its authority."""
    return f"{number}^^^RVJ^MR"


def adt(kind: str, cx: str, control: str, sent: str, *more: str) -> bytes:
    return message(msh(kind, sent, control, version="2.5"), f"EVN|{kind[4:7]}|{sent}", pid(cx),
                   "PV1|1|I|AMU^BAY2^BED4", *more)


HEADER = "mrn,creatinine_date_0,creatinine_result_0\n"


def history(rows: dict[str, tuple[str, float]]) -> str:
    return HEADER + "".join(f"{mrn},{when},{value}\n" for mrn, (when, value) in rows.items())


# --- one service run --------------------------------------------------------------------------

@dataclass
class Run:
    backend: str
    messages: list[bytes]
    pages: list[str]        # the pages decided, in order (the outbox: one row per body)
    deliveries: list[str]   # the bodies the pager received, in order
    acks: list[bytes]
    state: State
    metrics: str
    log: str

    def pages_of(self, mrn: str) -> list[str]:
        return [b for b in self.pages if b.split(",")[0] == mrn]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_stream(directory: Path, backend: Backend, msgs: list[bytes], history_csv: str,
                 profile: str | None = None, metrics: bool = False,
                 kill_at: int | None = None) -> Run:
    """The stream served whole by a fresh service (killed with -9 once the hospital's position
    reaches `kill_at`, then started again); returns once every message is journaled and every
    page delivered, with the service stopped."""
    directory.mkdir(parents=True, exist_ok=True)
    hist = directory / "history.csv"
    hist.write_text(history_csv)
    env = {}
    if profile is not None:
        (directory / "feed.toml").write_text(profile)
        env["FEED_PROFILE"] = str(directory / "feed.toml")
    port = free_port() if metrics else 0
    env["METRICS_PORT"] = str(port)
    state = backend.state(directory / "state")
    pager = Pager()
    hospital = MllpHospital(msgs)
    proc = start(hospital.port, pager.port, state, hist, **env)
    text = ""
    try:
        if kill_at is not None:
            assert wait_for(lambda: hospital.next >= kill_at or proc.poll() is not None, 30,
                            interval=0.002), log_text(proc)[-3000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            proc = start(hospital.port, pager.port, state, hist, **env)
        assert wait_for(hospital.done.is_set, 40), (f"stalled at {hospital.next}/{len(msgs)}:\n"
                                                   + log_text(proc)[-3000:])
        distinct = len(set(msgs))
        assert wait_for(lambda: state.value("SELECT count(*) FROM journal") == distinct
                        and state.value("SELECT count(*) FROM outbox WHERE status = 'pending'")
                        == 0, 20, interval=0.05), log_text(proc)[-3000:]
        if metrics:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
    finally:
        code, log = stop(proc)
        hospital.close()
        pager.close()
    assert code == 0, log[-3000:]
    decided = [r[0] for r in state.rows("SELECT body FROM outbox ORDER BY id")]
    assert state.value("SELECT count(*) FROM outbox WHERE status != 'delivered'") == 0
    assert set(pager.bodies) == set(decided), (pager.bodies, decided)
    return Run(backend.name, msgs, decided, pager.bodies, hospital.acks, state, text, log)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backends(request):
    """A factory of fresh state backends for this module's runs (one database each on
    PostgreSQL, dropped at the end); test ids end in [sqlite] or [postgresql]."""
    if request.param == "sqlite":
        yield lambda: Backend("sqlite")
        return
    import uuid

    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL at {POSTGRES_ADMIN_URL}: {e}")
    names: list[str] = []

    def make() -> Backend:
        names.append(f"aki_feeds_{uuid.uuid4().hex[:12]}")
        admin.execute(f"CREATE DATABASE {names[-1]}")
        return Backend("postgresql", POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + names[-1])

    try:
        yield make
    finally:
        for name in names:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def assert_all_acked(run: Run) -> None:
    """One `MSA|AA` per message, echoing its MSH-10 (no disconnects in between)."""
    assert len(run.acks) == len(run.messages)
    for raw, ack in zip(run.messages, run.acks, strict=True):
        control = raw.split(b"\r", 1)[0].split(b"|")[9]
        assert ack.startswith(b"MSH|") and b"\rMSA|AA|" + control + b"\r" in ack, (raw, ack)


# --- the default profile: what a LOINC-coded lab and an NHS PAS send ---------------------------

MARCH_1 = "2024-03-01 08:00:00"
TRUST_HISTORY = {
    "1101": (MARCH_1, 80.0), "1201": (MARCH_1, 80.0), "1202": (MARCH_1, 80.0),
    "1301": (MARCH_1, 80.0), "1302": (MARCH_1, 80.0),
    # 1401 and 1403: a baseline over a week old (RV2 = 100); nothing in the last 7 days.
    "1401": ("2024-02-01 08:00:00", 100.0), "1403": ("2024-02-01 08:00:00", 100.0),
    "1402": (MARCH_1, 80.0), "1501": (MARCH_1, 80.0), "1502": (MARCH_1, 80.0),
    "1601": (MARCH_1, 80.0), "RVJ1001": (MARCH_1, 80.0), "2001": (MARCH_1, 80.0),
}
D2, D3, D4, D5 = "20240302080000", "20240303080000", "20240304080000", "20240305080000"


def trust_stream() -> tuple[list[bytes], dict[str, list[str]]]:
    """The messages, and the pages each patient must get (every patient of the stream)."""
    m: list[bytes] = []
    # 1. LOINC 2160-0 in mg/dL: 0.9 mg/dL (79.6 µmol/L), then 2.3 (203 µmol/L, stage 2) pages;
    #    the next normal result, in µmol/L under the contract's code, does not.
    m += [oru(mr("1101"), "L1101a", "20240302091500", (D2, [creat_loinc_mass("0.9"), SODIUM])),
          oru(mr("1101"), "L1101b", "20240303091500",
              (D3, [creat_loinc_mass("2.3"), SODIUM, POTASSIUM, EGFR])),
          oru(mr("1101"), "L1101c", "20240304091500", (D4, [creat("80"), SODIUM]))]
    # 2. LOINC 14682-9 in µmol/L (spelt with a µ); a local code CREA that the default
    #    profile does not name: not judged (no page), but counted and journaled with why.
    m += [oru(mr("1201"), "L1201a", "20240302091500",
              (D2, [creat_loinc_moles("85", unit="µmol/L")])),
          oru(mr("1201"), "L1201b", "20240303091500", (D3, [creat_loinc_moles("210"), SODIUM])),
          oru(mr("1202"), "L1202a", "20240303091500", (D3, [creat_local("250"), SODIUM]))]
    # 3. A normal result corrected upwards for the same sample (OBX-11 C) pages once at that
    #    sample's time; the correction sent again (a new message) and re-delivered (the same
    #    bytes) page nothing more. 1302: a preliminary then its higher final.
    correction = oru(mr("1301"), "L1301b", "20240302141500", (D2, [creat("250", "C")]))
    m += [oru(mr("1301"), "L1301a", "20240302091500", (D2, [creat("90")])), correction,
          oru(mr("1301"), "L1301c", "20240302151500", (D2, [creat("250", "C")])), correction,
          oru(mr("1302"), "L1302a", "20240302091500", (D2, [creat("90", "P")])),
          oru(mr("1302"), "L1302b", "20240302121500", (D2, [creat("250", "F")]))]
    # 4. A result posted to the wrong patient (W) leaves 1401's baseline: 70 after it is judged
    #    against the 100 of February (no AKI), not against the 40 (70/40 = 1.75: stage 1), as
    #    1403, with no withdrawal, shows. 1402: a W for a high value never seen pages nothing.
    m += [oru(mr("1401"), "L1401a", "20240302091500", (D2, [creat("40")])),
          oru(mr("1401"), "L1401b", "20240302171500", (D2, [creat("40", "W")])),
          oru(mr("1401"), "L1401c", "20240303091500", (D3, [creat("70")])),
          oru(mr("1403"), "L1403a", "20240302091500", (D2, [creat("40")])),
          oru(mr("1403"), "L1403c", "20240303091500", (D3, [creat("70")])),
          oru(mr("1402"), "L1402a", "20240302091500", (D2, [creat("250", "W")]))]
    # 5. Two requests in one message: each creatinine takes its own OBR-7.
    m += [oru(mr("1501"), "L1501", "20240303091500", (D2, [creat("85"), SODIUM]),
              (D3, [creat("250"), POTASSIUM])),
          oru(mr("1502"), "L1502", "20240304091500", (D3, [creat("250")]),
              (D4, [creat("260"), SODIUM]))]
    # 6. PID-3 with the NHS number first: filed (and its history found) under the hospital
    #    number; an alphanumeric hospital number.
    m += [oru("9434765919^^^NHS^NH~1601^^^RVJ^MR", "L1601", "20240303091500",
              (D3, [creat_loinc_moles("250")])),
          oru(mr("RVJ1001"), "LRVJ1001", "20240303091500", (D3, [creat_loinc_moles("250")]))]
    # 7. 2001 merged into 2002, a duplicate registration (A40, MRG-1 2001): 2001's history and
    #    results move; an injury against them pages under 2002; the merge
    #    sent again and re-delivered changes nothing; a late result under 2001 files under 2002.
    merge = adt("ADT^A40^ADT_A39", mr("2002"), "P2002m", "20240302100000", f"MRG|{mr('2001')}")
    m += [adt("ADT^A01^ADT_A01", mr("2002"), "P2002a", "20240302070000"),
          oru(mr("2001"), "L2001a", "20240302091500", (D2, [creat("85")])),
          merge,
          oru(mr("2002"), "L2002a", "20240303091500", (D3, [creat("250")])),
          adt("ADT^A40^ADT_A39", mr("2002"), "P2002n", "20240303100000", f"MRG|{mr('2001')}"),
          merge,
          oru(mr("2001"), "L2001b", "20240304091500", (D4, [creat("260")]))]
    expected = {
        "1101": [f"1101,{D3}"], "1201": [f"1201,{D3}"], "1202": [],
        "1301": [f"1301,{D2}"], "1302": [f"1302,{D2}"],
        "1401": [], "1403": [f"1403,{D3}"], "1402": [],
        "1501": [f"1501,{D3}"], "1502": [f"1502,{D3}"],
        "1601": [f"1601,{D3}"], "RVJ1001": [f"RVJ1001,{D3}"],
        "2001": [], "2002": [f"2002,{D3}"],
    }
    return m, expected


@pytest.fixture(scope="module")
def trust_run(backends, tmp_path_factory):
    msgs, expected = trust_stream()
    run = serve_stream(tmp_path_factory.mktemp("trust"), backends(), msgs,
                       history(TRUST_HISTORY), metrics=True)
    return run, expected


def test_every_message_acked_and_no_page_but_those_expected(trust_run):
    run, expected = trust_run
    assert_all_acked(run)
    assert sorted(run.pages) == sorted(b for bodies in expected.values() for b in bodies)
    assert run.state.value("SELECT count(*) FROM journal WHERE status = 'dead'") == 0


def test_loinc_mass_units_page_once_at_the_sample_time(trust_run):
    run, _ = trust_run
    assert run.pages_of("1101") == [f"1101,{D3}"]
    # Stored in µmol/L: 2.3 mg/dL is 203.3, not 2.3.
    assert run.state.rows("SELECT value FROM results WHERE mrn = ? AND source = 'feed' "
                          "ORDER BY time", "1101") == [(pytest.approx(79.56),),
                                                       (pytest.approx(203.32),), (80.0,)]


def test_loinc_moles_pages_and_an_unnamed_local_code_is_never_silent(trust_run):
    run, _ = trust_run
    assert run.pages_of("1201") == [f"1201,{D3}"]
    assert run.pages_of("1202") == []
    assert 'aki_unrecognised_creatinine_total{code="CREA"} 1.0' in run.metrics
    rows = run.state.rows("SELECT status, reason FROM journal WHERE raw = ?",
                          [r for r in run.messages if b"L1202a" in r][0])
    assert len(rows) == 1 and rows[0][0] == "ignored", rows
    assert "CREA" in rows[0][1] and "feed profile does not name it" in rows[0][1], rows
    assert "creatinine-like result of patient" in run.log and "not judged: CREA" in run.log


def test_upward_correction_pages_once(trust_run):
    run, _ = trust_run
    assert run.pages_of("1301") == [f"1301,{D2}"]
    assert run.pages_of("1302") == [f"1302,{D2}"]
    assert run.state.rows("SELECT value, status FROM results WHERE mrn = ? AND source = 'feed'",
                          "1301") == [(250.0, "C")]
    # The value judged normal first is kept for audit.
    assert (90.0, "F") in run.state.rows(
        "SELECT value, status FROM result_revisions WHERE mrn = ? AND action = 'corrected'",
        "1301")


def test_wrong_patient_never_pages_and_leaves_the_baseline(trust_run):
    run, _ = trust_run
    assert run.pages_of("1401") == [] and run.pages_of("1402") == []
    assert run.pages_of("1403") == [f"1403,{D3}"]     # the same values, without the W: pages
    assert run.state.rows("SELECT value FROM results WHERE mrn = ? ORDER BY time",
                          "1401") == [(100.0,), (70.0,)]
    assert run.state.rows("SELECT value FROM result_revisions WHERE mrn = ? "
                          "AND action = 'removed'", "1401") == [(40.0,)]


def test_each_obr_gives_its_own_time(trust_run):
    run, _ = trust_run
    assert run.pages_of("1501") == [f"1501,{D3}"]
    assert run.pages_of("1502") == [f"1502,{D3}"]
    assert run.state.rows("SELECT time, value FROM results WHERE mrn = ? AND source = 'feed' "
                          "ORDER BY time", "1501")[0][1] == 85.0


def test_hospital_number_picked_from_pid3(trust_run):
    run, _ = trust_run
    assert run.pages_of("1601") == [f"1601,{D3}"]
    assert run.pages_of("RVJ1001") == [f"RVJ1001,{D3}"]
    assert run.state.value("SELECT count(*) FROM results WHERE mrn = ?", "9434765919") == 0
    assert run.state.value("SELECT count(*) FROM results WHERE mrn = ?", "RVJ1001") == 2


def test_merge_moves_history_and_pages_under_the_surviving_number(trust_run):
    run, _ = trust_run
    assert run.pages_of("2002") == [f"2002,{D3}"] and run.pages_of("2001") == []
    assert run.state.rows("SELECT old_mrn, new_mrn FROM merges") == [("2001", "2002")]
    assert run.state.value("SELECT count(*) FROM results WHERE mrn = ?", "2001") == 0
    assert run.state.rows("SELECT value FROM results WHERE mrn = ? ORDER BY time", "2002") == [
        (80.0,), (85.0,), (250.0,), (260.0,)]
    # Moved once: the merge sent again and re-delivered moved nothing more.
    assert run.state.value("SELECT count(*) FROM result_revisions WHERE action = 'merged'") == 2
    assert run.state.rows("SELECT status FROM journal WHERE raw = ?",
                          [r for r in run.messages if b"P2002n" in r][0]) == [("ignored",)]


# --- a trust's own profile: its local code, zero-padded numbers; a kill -9 midway ------------

PROFILE = """\
name = "RVJ WinPath (test)"
[patient]
identifier_types = ["MR"]
strip_leading_zeros = true
[[creatinine]]
code = "CREA"
system = "L"
unit = "umol/L"
"""


def profiled_stream() -> tuple[list[bytes], dict[str, list[str]]]:
    m = [
        # The local code, OBX-6 empty (the profile's unit), then with its unit.
        oru(mr("1203"), "L1203a", "20240302091500", (D2, [creat_local("95", unit=""), SODIUM])),
        oru(mr("1203"), "L1203b", "20240303091500", (D3, [creat_local("250"), SODIUM])),
        # 0001001 is 1001 (history under 1001): pages at once; 1001's next high result is the
        # same episode. Two patients would have paged at D3 instead.
        oru(mr("0001001"), "L1001a", "20240302091500", (D2, [creat("250")])),
        oru(mr("1001"), "L1001b", "20240303091500", (D3, [creat("255")])),
        oru(mr("0001001"), "L1001c", "20240304091500", (D4, [creat_local("240")])),
        # A history extract that pads its numbers: found under the feed's 1205 all the same.
        oru(mr("1205"), "L1205", "20240303091500", (D3, [creat("250")])),
        # The LOINC defaults still hold beside the trust's code.
        oru(mr("1101"), "L1101", "20240303091500", (D3, [creat_loinc_mass("2.3")])),
        oru(mr("1101"), "L1101z", "20240305091500", (D5, [creat_loinc_mass("0.9")])),
    ]
    expected = {"1203": [f"1203,{D3}"], "1001": [f"1001,{D2}"], "0001001": [],
                "1205": [f"1205,{D3}"], "1101": [f"1101,{D3}"]}
    return m, expected


@pytest.fixture(scope="module")
def profiled_run(backends, tmp_path_factory):
    msgs, expected = profiled_stream()
    hist = history({"1203": (MARCH_1, 80.0), "1001": (MARCH_1, 80.0), "0001205": (MARCH_1, 80.0),
                    "1101": (MARCH_1, 80.0)})
    run = serve_stream(tmp_path_factory.mktemp("profiled"), backends(), msgs, hist,
                       profile=PROFILE, kill_at=3)
    return run, expected


def test_trust_profile_local_code_and_zero_padded_numbers(profiled_run):
    run, expected = profiled_run
    assert_all_acked(run)
    # (A crash between the pager's 200 and its record may deliver a page twice: decided once.)
    assert sorted(run.pages) == sorted(b for bodies in expected.values() for b in bodies)
    for mrn, bodies in expected.items():
        assert run.pages_of(mrn) == bodies, mrn
    assert run.state.value("SELECT count(*) FROM results WHERE mrn LIKE '0%'") == 0
    assert run.state.value("SELECT count(*) FROM results WHERE mrn = ?", "1001") == 4
    assert run.state.value("SELECT count(*) FROM journal WHERE status = 'dead'") == 0


# --- the assessment hospital's dialect, unchanged ---------------------------------------------

@pytest.fixture(scope="module")
def contract_run(backends, tmp_path_factory):
    d = tmp_path_factory.mktemp("contract")
    datafiles.write_hospital(d / "gen", generate(days=15, patients=3000, seed=5, cohort_size=0))
    msgs = datafiles.read_messages(d / "gen" / "messages.mllp")
    expected = offline_pages(str(d / "gen" / "history.csv"), msgs, NhsDetector())
    run = serve_stream(d, backends(), msgs, (d / "gen" / "history.csv").read_text())
    return run, expected


def test_contract_dialect_pages_exactly_as_offline(contract_run):
    run, expected = contract_run
    assert len(expected) >= 5
    assert all(b"\rMSA|AA\r" in a for a in run.acks) and len(run.acks) == len(run.messages)
    assert sorted(run.pages) == sorted(expected)
