"""`aki-alert feed check`: what the service would do with a trust's messages, offline."""

import json
from pathlib import Path

import pytest

from aki_alert import feedcheck, hl7
from aki_alert.cli import main

REPO = Path(__file__).resolve().parents[2]
DEV_STREAM = REPO.parent / "shared" / "data" / "dev-stream" / "messages.mllp"
PROFILES = REPO / "deploy" / "profiles"


def msg(kind: str, *segs: str, version: str = "2.5.1", control: str = "C1") -> str:
    return "\r".join([f"MSH|^~\\&|LAB|RVJ|||20240301083000||{kind}|{control}|P|{version}",
                      *segs]) + "\r"


def oru(obx: str, pid: str = "1001^^^RVJ^MR", obr_time: str = "20240301080000") -> str:
    return msg("ORU^R01^ORU_R01", f"PID|1||{pid}||DOE^JANE||19600101|F",
               f"OBR|1|||CHEM^Chemistry|||{obr_time}", obx)


LOINC_MG = oru("OBX|1|NM|2160-0^Creatinine [Mass/volume] in Serum or Plasma^LN||1.2|mg/dL|||||F")
LOCAL = oru("OBX|1|NM|CREA^Creatinine^L||95|umol/L|||||F")
URINE = oru("OBX|1|NM|2161-8^Creatinine [Mass/volume] in Urine^LN||120|mg/dL|||||F")
UNKNOWN_UNIT = oru("OBX|1|NM|2160-0^Creatinine^LN||1.2|ug/mL|||||F")
NOT_A_NUMBER = oru("OBX|1|ST|2160-0^Creatinine^LN||haemolysed|mg/dL|||||F")
WITHDRAWN = oru("OBX|1|NM|2160-0^Creatinine^LN||1.2|mg/dL|||||W")
CORRECTED = oru("OBX|1|NM|2160-0^Creatinine^LN||2.4|mg/dL|||||C")
PRELIMINARY = oru("OBX|1|NM|2160-0^Creatinine^LN||2.4|mg/dL|||||P")
SODIUM = oru("OBX|1|NM|2951-2^Sodium^LN||140|mmol/L|||||F")
NHS_FIRST = oru("OBX|1|NM|2160-0^Creatinine^LN||1.0|mg/dL|||||F",
                pid="9434765919^^^NHS^NH~0001001^^^RVJ^MR")
UPDATE = msg("ADT^A08^ADT_A01", "PID|1||1001^^^RVJ^MR||DOE^JANE||19600101|F")
MERGE = msg("ADT^A40^ADT_A39", "PID|1||1001^^^RVJ^MR||DOE^JANE||19600101|F",
            "MRG|2002^^^RVJ^MR")
BAD_MRN = oru("OBX|1|NM|2160-0^Creatinine^LN||1.2|mg/dL|||||F", pid="10.01")
GARBAGE = "this is not HL7 at all"
CONTRACT = [
    "MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||20240101055700||ADT^A01|||2.5\r"
    "PID|1||166185053||JORGIE LOWE||19680919|F\r",
    "MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||20240331012700||ORU^R01|||2.5\r"
    "PID|1||166185053\rOBR|1||||||20240331012700\rOBX|1|SN|CREATININE||94.11504200406928\r",
    "MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||20240331043800||ADT^A03|||2.5\r"
    "PID|1||166185053\r",
]


def mllp(path: Path, *messages: str) -> Path:
    path.write_bytes(b"".join(b"\x0b" + m.encode() + b"\x1c\r" for m in messages))
    return path


def text(path: Path, *messages: str) -> Path:
    """One message per line, segments separated by a real \\r (a PAS export)."""
    path.write_bytes(b"\n".join(m.rstrip("\r").encode() for m in messages) + b"\n")
    return path


def profile(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "feed.toml"
    p.write_text(body)
    return p


def check(*messages: str, prof: hl7.FeedProfile = hl7.DEFAULT_PROFILE) -> feedcheck.Report:
    return feedcheck.check_items([m.encode() for m in messages], prof)


def obx(report: feedcheck.Report) -> dict[tuple[str, str, str], tuple[int, str]]:
    """(code, unit, status) -> (count, what happens); one outcome per key in these tests."""
    out = {}
    for (k, o), n in report.obx.items():
        assert (k.code, k.unit, k.status) not in out
        out[(k.code, k.unit, k.status)] = (n, o.what)
    return out


def decisions(report: feedcheck.Report) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for (t, o, _), n in report.decisions.items():
        out[(t, o)] = out.get((t, o), 0) + n
    return out


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["feed", "check", *args])
    out, err = capsys.readouterr()
    return code, out, err


# --- what each result comes to -----------------------------------------------------------------

def test_loinc_mg_dl_is_judged_and_converted():
    r = check(LOINC_MG, LOINC_MG)
    assert obx(r) == {("2160-0", "mg/dL", "F"): (
        2, "judged as creatinine, converted from mg/dL (×88.4)")}
    assert decisions(r) == {("ORU^R01", "applied"): 2}
    assert r.judged == 2 and r.not_judged == 0 and r.exit_code == 0


def test_local_code_is_not_judged_until_the_profile_names_it(tmp_path):
    r = check(LOCAL)
    (n, what), = obx(r).values()
    assert n == 1 and what.startswith("NOT JUDGED: looks like creatinine")
    assert decisions(r) == {("ORU^R01", "ignored"): 1}
    assert r.not_judged == 1 and r.exit_code == 1

    named = hl7.load_profile(str(profile(tmp_path, '[[creatinine]]\ncode = "CREA"\n'
                                                   'system = "L"\nunit = "umol/L"\n')))
    r = check(LOCAL, prof=named)
    assert obx(r) == {("CREA", "umol/L", "F"): (1, "judged as creatinine, µmol/L")}
    assert r.exit_code == 0


def test_urine_creatinine_and_other_tests_are_ignored_without_failing():
    r = check(URINE, SODIUM)
    assert obx(r) == {
        ("2161-8", "mg/dL", "F"): (1, "ignored: urine creatinine (2161-8), not serum creatinine"),
        ("2951-2", "mmol/L", "F"): (1, "ignored: not creatinine"),
    }
    assert decisions(r) == {("ORU^R01", "ignored"): 2}
    assert r.exit_code == 0


def test_unknown_unit_and_non_numeric_value_are_creatinine_dead_letters():
    r = check(UNKNOWN_UNIT, NOT_A_NUMBER)
    assert obx(r) == {
        ("2160-0", "ug/mL", "F"): (1, "DEAD LETTER: unit 'ug/mL' unknown (add it under [units] "
                                      "in the profile)"),
        ("2160-0", "mg/dL", "F"): (1, "DEAD LETTER: OBX-5 value is not a number"),
    }
    assert decisions(r) == {("ORU^R01", "dead letter"): 2}
    assert r.not_judged == 2 and r.exit_code == 1
    # The value itself (patient data) is not in the grouped reason.
    assert not any("haemolysed" in reason for _, _, reason in r.decisions)


def test_statuses_say_what_they_do(tmp_path):
    r = check(WITHDRAWN, CORRECTED, PRELIMINARY, oru(
        "OBX|1|NM|2160-0^Creatinine^LN||1.2|mg/dL|||||X"))
    got = obx(r)
    assert got[("2160-0", "mg/dL", "W")][1] == ("creatinine wrong patient (W): removed from the "
                                                "baseline, never pages")
    assert "corrects the stored value" in got[("2160-0", "mg/dL", "C")][1]
    assert got[("2160-0", "mg/dL", "P")][1].startswith("judged as creatinine")
    assert "never pages" in got[("2160-0", "mg/dL", "X")][1]
    assert r.judged == 2 and r.exit_code == 0
    assert decisions(r) == {("ORU^R01", "applied"): 3, ("ORU^R01", "ignored"): 1}

    store = hl7.load_profile(str(profile(tmp_path, 'preliminary = "store"\n')))
    r = check(PRELIMINARY, prof=store)
    assert obx(r)[("2160-0", "mg/dL", "P")][1].startswith("creatinine preliminary (P): stored")
    assert r.judged == 0 and r.exit_code == 0     # stored by choice, judged once final


def test_a_message_level_dead_letter_loses_its_creatinine():
    r = check(BAD_MRN)
    (n, what), = obx(r).values()
    assert what.startswith("NOT JUDGED: its message is a dead letter (PID-3 MRN '…'")
    assert r.exit_code == 1
    assert not any("10.01" in reason for _, _, reason in r.decisions)


@pytest.mark.parametrize("message", [
    oru("OBX|1|NM|2160-0^Creatinine^LN||900|mg/dL|||||F"),               # 79,560 µmol/L
    oru("OBX|1|NM|2160-0^Creatinine^LN||1.2|mg/dL|||||F", obr_time="2024-03-01"),
    msg("ADT^A01", "PID|1||1001||DOE^JANE||01/01/1960|F"),
    oru("OBX|1|NM|2160-0^Creatinine^LN||1.2|mg/dL|||||F", pid="AB.12"),
])
def test_dead_letter_reasons_group_without_patient_data(message):
    r = check(message, message.replace("DOE", "ROE").replace("1.2", "1.3").replace("900", "800"))
    (kind, outcome, reason), = r.decisions
    assert outcome == "dead letter" and r.decisions[(kind, outcome, reason)] == 2
    for secret in ("900", "2024-03-01", "01/01/1960", "AB.12"):
        assert secret not in reason


def test_patient_numbers_are_counted_never_printed(tmp_path):
    nhs = hl7.load_profile(str(profile(tmp_path, '[patient]\nidentifier_types = ["MR"]\n'
                                                 'assigning_authorities = ["RVJ"]\n'
                                                 'strip_leading_zeros = true\n')))
    r = check(NHS_FIRST, LOINC_MG, prof=nhs)
    assert r.ids["with PID-3"] == 2
    assert r.ids["NHS number first in PID-3"] == 1
    assert r.ids["changed by normalisation"] == 1
    assert r.ids["patient number looks like an NHS number"] == 0
    assert r.chosen == {("MR", "RVJ"): 2}
    out = feedcheck.as_text(r) + json.dumps(feedcheck.as_json(r))
    assert "9434765919" not in out and "0001001" not in out and "1001" not in out

    # A profile that takes the first identifier files results under the NHS number: flagged.
    first = hl7.load_profile(str(profile(tmp_path, '[patient]\nidentifier_types = ["NH"]\n')))
    r = check(NHS_FIRST, prof=first)
    assert r.ids["patient number looks like an NHS number"] == 1
    assert "filed under NHS numbers" in feedcheck.as_text(r)


def test_adt_updates_merges_and_garbage():
    r = check(UPDATE, MERGE, GARBAGE, msg("ADT^A02", "PID|1||1001^^^RVJ^MR"))
    d = decisions(r)
    assert d == {("ADT^A08", "applied"): 1, ("ADT^A40", "applied"): 1,
                 ("unparseable", "dead letter"): 1, ("ADT^A02", "ignored"): 1}
    assert r.exit_code == 0 and not r.obx


def test_point_of_care_results_are_judged_and_creatinine_elsewhere_fails():
    point_of_care = msg("ORU^R30^ORU_R30", "PID|1||1001^^^RVJ^MR",
                        "OBR|1|||CHEM|||20240301080000",
                        "OBX|1|NM|2160-0^Creatinine^LN||1.2|mg/dL|||||F")
    weight = msg("ADT^A01^ADT_A01", "PID|1||1001^^^RVJ^MR||DOE^JANE||19600101|F",
                 "OBX|1|NM|29463-7^Body weight^LN||70|kg|||||F")
    r = check(point_of_care, weight)
    assert decisions(r) == {("ORU^R30", "applied"): 1, ("ADT^A01", "applied"): 1}
    assert r.exit_code == 0
    in_adt = msg("ADT^A01^ADT_A01", "PID|1||1001^^^RVJ^MR||DOE^JANE||19600101|F",
                 "OBX|1|NM|2160-0^Creatinine^LN||1.2|mg/dL|||||F")
    r = check(in_adt)
    assert obx(r) == {
        ("2160-0", "mg/dL", "F"): (1, "NOT JUDGED: ADT^A01 messages are not read for results"),
    }
    assert r.exit_code == 1


# --- the command -------------------------------------------------------------------------------

MIXED = (LOINC_MG, LOCAL, URINE, UNKNOWN_UNIT, WITHDRAWN, CORRECTED, NHS_FIRST, UPDATE, MERGE)


@pytest.mark.parametrize("write", [mllp, text])
def test_command_reads_mllp_and_text_files(tmp_path, capsys, write):
    path = write(tmp_path / "feed.dat", *MIXED, GARBAGE)
    code, out, err = run(capsys, str(path), "--json")
    assert code == 1 and not err
    doc = json.loads(out)
    assert doc["messages"] == len(MIXED) + 1
    assert doc["creatinine_not_judged"] == 2       # CREA unnamed, ug/mL unknown
    assert doc["creatinine_judged"] == 3           # F ×2 (one NHS-first) and C; W removes
    types: dict[tuple[str, str], int] = {}
    for m in doc["message_types"]:
        types[(m["type"], m["decision"])] = types.get((m["type"], m["decision"]), 0) + m["count"]
    assert types[("ORU^R01", "applied")] == 4
    assert types[("unparseable", "dead letter")] == 1

    code, out, _ = run(capsys, str(path))
    assert code == 1
    assert "NOT JUDGED: looks like creatinine" in out and "FAIL: 2 creatinine-looking" in out


def test_command_exits_0_with_a_profile_that_names_everything(tmp_path, capsys):
    path = mllp(tmp_path / "feed.mllp", LOINC_MG, LOCAL, URINE, CORRECTED)
    prof = profile(tmp_path, '[[creatinine]]\ncode = "CREA"\nunit = "umol/L"\n')
    code, out, _ = run(capsys, str(path), "--feed-profile", str(prof))
    assert code == 0 and "OK: every creatinine result would be judged (3)" in out


def test_feed_profile_from_the_environment(tmp_path, capsys, monkeypatch):
    path = mllp(tmp_path / "feed.mllp", LOCAL)
    prof = profile(tmp_path, '[[creatinine]]\ncode = "CREA"\nunit = "umol/L"\n')
    monkeypatch.setenv("FEED_PROFILE", str(prof))
    code, out, _ = run(capsys, str(path))
    assert code == 0 and str(prof) in out


def test_contract_dialect_exits_0(tmp_path, capsys):
    code, out, _ = run(capsys, str(mllp(tmp_path / "contract.mllp", *CONTRACT)))
    assert code == 0
    assert "judged as creatinine, µmol/L (OBX-6 empty: the code's default unit)" in out


@pytest.mark.parametrize("args, words", [
    (["missing.mllp"], "cannot read"),
    (["empty.mllp"], "no messages"),
    (["ok.mllp", "--feed-profile", "missing.toml"], "feed profile"),
    (["ok.mllp", "--feed-profile", "bad.toml"], "not valid TOML"),
    (["ok.mllp", "--feed-profile", "unknown.toml"], "unknown key"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEED_PROFILE", raising=False)
    (tmp_path / "empty.mllp").write_bytes(b"")
    mllp(tmp_path / "ok.mllp", LOINC_MG)
    (tmp_path / "bad.toml").write_text("name = \n")
    (tmp_path / "unknown.toml").write_text("colour = 'blue'\n")
    code, out, err = run(capsys, *args)
    assert code == 2 and not out
    assert words in err and err.count("\n") == 1


def test_a_day_of_messages_is_fast():
    import time

    messages = [m.encode() for m in (LOINC_MG, URINE, UPDATE, NHS_FIRST, CORRECTED)] * 4_000
    started = time.perf_counter()
    r = feedcheck.check_items(messages)
    assert r.messages == 20_000
    assert time.perf_counter() - started < 10    # 100k messages well under a minute


# --- the sample profiles and the dev stream ----------------------------------------------------

def test_sample_loinc_lab_profile_judges_its_lab():
    prof = hl7.load_profile(str(PROFILES / "loinc-lab.toml"))
    r = check(LOINC_MG, oru("OBX|1|NM|14682-9^Creatinine^LN||88|umol/L|||||F"), prof=prof)
    assert r.judged == 2 and r.exit_code == 0


def test_sample_nhs_local_lab_profile_judges_its_lab():
    prof = hl7.load_profile(str(PROFILES / "nhs-local-lab.toml"))
    padded = oru("OBX|1|NM|CREA^Creatinine^L||95|umol/L|||||F",
                 pid="9434765919^^^NHS^NH~0001001^^^RVJ^MR")
    lower = oru("OBX|1|NM|CRE^Creatinine^L||95||||||F",
                pid="9434765919^^^NHS^NH~rvj1001^^^RVJ^MR")
    r = check(padded, lower, prof=prof)
    assert r.judged == 2 and r.exit_code == 0
    assert r.chosen == {("MR", "RVJ"): 2} and r.ids["changed by normalisation"] == 2
    assert [hl7.parse(m.encode(), prof).mrn for m in (padded, lower)] == ["1001", "RVJ1001"]


def test_dev_stream_is_all_judged(capsys):
    if not DEV_STREAM.exists():
        pytest.skip(f"hospital data not present at {DEV_STREAM}")
    code, out, _ = run(capsys, str(DEV_STREAM), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["creatinine_not_judged"] == 0
    results = sum(m["count"] for m in doc["message_types"] if m["type"] == "ORU^R01")
    assert results > 0 and doc["creatinine_judged"] == results
    assert all(m["decision"] == "applied" for m in doc["message_types"])


def test_integration_guide_profile_example_loads():
    import re
    import tomllib

    from aki_alert.hl7.profile import profile_from

    guide = (REPO / "docs" / "integration.md").read_text()
    block, = re.findall(r"```toml\n(.*?)```", guide, re.S)
    prof = profile_from(tomllib.loads(block))
    r = check(oru("OBX|1|NM|CREA^Creatinine^WinPath||95|umol/L (SI)|||||F",
                  pid="9434765919^^^NHS^NH~rvj0001001^^^RVJ^MR"), prof=prof)
    assert r.judged == 1 and r.chosen == {("MR", "RVJ"): 1}
