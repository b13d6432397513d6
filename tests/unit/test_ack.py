"""Acknowledgements byte for byte against HL7 v2 original-mode rules (hl7/ack.py), accepted by
the assessment hospital's strict parser (hospital/ackcheck.py) and read back by python-hl7."""

from __future__ import annotations

import importlib
import itertools

import hl7 as oracle
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aki_alert import hl7
from aki_alert.hl7.encoding import unescape
from aki_alert.hl7.profile import FeedProfile
from aki_alert.hospital.ackcheck import check_ack
from aki_alert.mllp import FrameError

ack_module = importlib.import_module("aki_alert.hl7.ack")
NOW = b"20240102030405"
CONTRACT_ADMIT = (b"MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||20240101055700||ADT^A01|||2.5\r"
                  b"PID|1||166185053||JORGIE LOWE||19680919|F\r")
CONTRACT_RESULT = (b"MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||20240331012700||ORU^R01|||2.5\r"
                   b"PID|1||151493085\rOBR|1||||||20240331012700\r"
                   b"OBX|1|SN|CREATININE||94.11504200406928\r")


def engine_result(version: bytes, control: bytes = b"MSG00042", value: bytes = b"94.1",
                  processing: bytes = b"P") -> bytes:
    """A result as an integration engine sends it: applications, facilities, MSH-10, MSH-11."""
    return (b"MSH|^~\\&|LIMS|RIVERSIDE LAB|AKI-ALERT|RIVERSIDE TRUST|20240331012700||"
            b"ORU^R01^ORU_R01|" + control + b"|" + processing + b"|" + version + b"\r"
            b"PID|1||151493085\rOBR|1||||||20240331012700\r"
            b"OBX|1|NM|CREATININE||" + value + b"|umol/L|||||F\r")


@pytest.fixture(autouse=True)
def fixed_clock_and_ids(monkeypatch):
    """MSH-7 and MSH-10 of our ACKs made predictable: the clock at one second, ids from 1."""
    monkeypatch.setattr(ack_module, "_clock", lambda: 1_704_164_645.5)
    monkeypatch.setattr(ack_module, "_now", [1_704_164_645, NOW])
    monkeypatch.setattr(ack_module, "_PREFIX", "TESTPFX0-")
    monkeypatch.setattr(ack_module, "_counter", itertools.count(1))
    monkeypatch.setattr(ack_module, "_aa_cache", {})


def segments(reply: bytes) -> list[bytes]:
    assert reply.endswith(b"\r") and b"\n" not in reply
    return reply[:-1].split(b"\r")


# --- AA, byte for byte ----------------------------------------------------------------------

def test_the_contract_message_without_control_id():
    assert hl7.acknowledgement(CONTRACT_ADMIT) == (
        b"MSH|^~\\&|||SIMULATION|SOUTH RIVERSIDE|20240102030405||ACK^A01^ACK|TESTPFX0-1||2.5\r"
        b"MSA|AA\r")
    assert hl7.acknowledgement(CONTRACT_RESULT) == (
        b"MSH|^~\\&|||SIMULATION|SOUTH RIVERSIDE|20240102030405||ACK^R01^ACK|TESTPFX0-2||2.5\r"
        b"MSA|AA\r")


def test_an_engine_message_v25_with_control_id_is_swapped_and_echoed():
    assert hl7.acknowledgement(engine_result(b"2.5")) == (
        b"MSH|^~\\&|AKI-ALERT|RIVERSIDE TRUST|LIMS|RIVERSIDE LAB|20240102030405||ACK^R01^ACK|"
        b"TESTPFX0-1|P|2.5\r"
        b"MSA|AA|MSG00042\r")


def test_v251_echoes_its_version_and_processing_id():
    assert hl7.acknowledgement(engine_result(b"2.5.1", processing=b"T")) == (
        b"MSH|^~\\&|AKI-ALERT|RIVERSIDE TRUST|LIMS|RIVERSIDE LAB|20240102030405||ACK^R01^ACK|"
        b"TESTPFX0-1|T|2.5.1\r"
        b"MSA|AA|MSG00042\r")


def test_v23_has_no_message_structure_component():
    """MSH-9's third component (MSG.3) exists from v2.3.1: a v2.3 ACK is `ACK^R01`."""
    assert hl7.acknowledgement(engine_result(b"2.3")) == (
        b"MSH|^~\\&|AKI-ALERT|RIVERSIDE TRUST|LIMS|RIVERSIDE LAB|20240102030405||ACK^R01|"
        b"TESTPFX0-1|P|2.3\r"
        b"MSA|AA|MSG00042\r")
    assert segments(hl7.acknowledgement(engine_result(b"2.3.1")))[0].split(b"|")[8] == (
        b"ACK^R01^ACK")
    assert segments(hl7.acknowledgement(engine_result(b"2.4")))[0].split(b"|")[8] == (
        b"ACK^R01^ACK")


def test_an_empty_version_answers_25_and_an_empty_processing_id_stays_empty():
    raw = b"MSH|^~\\&|A|B|C|D|20240101000000||ADT^A03|X9||\rPID|1||1\r"
    assert hl7.acknowledgement(raw) == (
        b"MSH|^~\\&|C|D|A|B|20240102030405||ACK^A03^ACK|TESTPFX0-1||2.5\rMSA|AA|X9\r")


def test_a_composite_version_and_escaped_fields_are_echoed_as_sent():
    raw = (b"MSH|^~\\&|LAB\\T\\1^OID^ISO|H\\F\\X|||20240101000000||ORU^R01^ORU_R01|C\\S\\1|P|"
           b"2.5^GBR&&ISO3166\rPID|1||1\r")
    msh = segments(hl7.acknowledgement(raw))[0]
    assert msh == (b"MSH|^~\\&|||LAB\\T\\1^OID^ISO|H\\F\\X|20240102030405||ACK^R01^ACK|"
                   b"TESTPFX0-1|P|2.5^GBR&&ISO3166")
    assert segments(hl7.acknowledgement(raw))[1] == b"MSA|AA|C\\S\\1"


def test_the_message_own_separators_are_honoured():
    raw = (b"MSH#*~\\&#LIMS#LAB#AKI#TRUST#20240331012700##ORU*R01*ORU_R01#Q7#P#2.5.1\r"
           b"PID#1##151493085\rOBR#1######20240331012700\rOBX#1#NM#CREATININE##94.1\r")
    assert hl7.acknowledgement(raw) == (
        b"MSH#*~\\&#AKI#TRUST#LIMS#LAB#20240102030405##ACK*R01*ACK#TESTPFX0-1#P#2.5.1\r"
        b"MSA#AA#Q7\r")
    assert check_ack(hl7.acknowledgement(raw.replace(b"#", b"|"))) == "AA"


def test_line_feeds_and_leading_whitespace_in_the_message_are_tolerated():
    raw = b"\n" + CONTRACT_ADMIT.replace(b"\r", b"\n")
    assert segments(hl7.acknowledgement(raw))[0].split(b"|")[8] == b"ACK^A01^ACK"


def test_control_ids_are_unique_and_fit_msh10():
    ids = [segments(hl7.acknowledgement(CONTRACT_ADMIT))[0].split(b"|")[9] for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert all(len(i) <= 20 for i in ids)


def test_the_clock_is_read_per_second(monkeypatch):
    monkeypatch.setattr(ack_module, "_clock", lambda: 1_704_164_646.1)
    msh = segments(hl7.acknowledgement(CONTRACT_ADMIT))[0]
    assert len(msh.split(b"|")[6]) == 14 and msh.split(b"|")[6] != NOW


# --- frames too broken to read: the minimal ACK ---------------------------------------------

@pytest.mark.parametrize("raw", [b"", b"garbage\r", b"PID|1||1\rMSH|^~\\&|x\r",
                                 b"MSH1^~\\&1A1B\r", b"MSH|\r"])
def test_a_frame_without_a_readable_msh_gets_the_minimal_ack(raw):
    assert hl7.acknowledgement(raw) == (
        b"MSH|^~\\&|||||20240102030405||ACK|TESTPFX0-1|P|2.5\rMSA|AA\r")


def test_an_oversized_frame_is_answered_from_its_prefix_when_it_holds_the_msh():
    whole = FrameError("MLLP frame of 2000000 bytes exceeds the 1048576-byte cap",
                       engine_result(b"2.5")[:256])
    assert segments(hl7.acknowledgement(whole)) == [
        b"MSH|^~\\&|AKI-ALERT|RIVERSIDE TRUST|LIMS|RIVERSIDE LAB|20240102030405||ACK^R01^ACK|"
        b"TESTPFX0-1|P|2.5", b"MSA|AA|MSG00042"]
    cut = FrameError("too big", b"MSH|^~\\&|LIMS|LAB|AKI|TRUST|2024")
    assert hl7.acknowledgement(cut) == (
        b"MSH|^~\\&|||||20240102030405||ACK|TESTPFX0-2|P|2.5\rMSA|AA\r")


# --- the hl7 NACK policy: AE and AR with an ERR segment --------------------------------------

def test_a_dead_letter_is_answered_ae_with_err_v25():
    code, reply = hl7.nack_acknowledgement(engine_result(b"2.5", value=b"high"))
    assert code == "AE"
    assert reply == (
        b"MSH|^~\\&|AKI-ALERT|RIVERSIDE TRUST|LIMS|RIVERSIDE LAB|20240102030405||ACK^R01^ACK|"
        b"TESTPFX0-1|P|2.5\r"
        b"MSA|AE|MSG00042\r"
        b"ERR|||102^Data type error^HL70357|E||||OBX-5 creatinine 'high' of CREATININE is not "
        b"a number\r")


def test_a_v23_dead_letter_carries_the_code_in_err1_and_the_reason_in_msa3():
    code, reply = hl7.nack_acknowledgement(engine_result(b"2.3", value=b"high"))
    assert code == "AE"
    assert segments(reply)[1:] == [
        b"MSA|AE|MSG00042|OBX-5 creatinine 'high' of CREATININE is not a number",
        b"ERR|^^^102&Data type error&HL70357"]


@pytest.mark.parametrize("raw, code, err3", [
    (CONTRACT_RESULT.replace(b"PID|1||151493085\r", b""), "AE", b"101"),
    (CONTRACT_RESULT.replace(b"|SN|CREATININE||", b"|SN|CREATININE||94|mg/L|||||Q"), "AE",
     b"103"),
    (CONTRACT_RESULT.replace(b"|||2.5\r", b"|||\r"), "AE", b"101"),
    (b"PID|1||1\r", "AR", b"100"),
    (b"MSHa^~\\&a\r", "AR", b"102"),
])
def test_error_codes_come_from_table_0357(raw, code, err3):
    got, reply = hl7.nack_acknowledgement(raw)
    assert got == code
    err = segments(reply)[-1]
    assert err.startswith(b"ERR|||" + err3 + b"^") and err.split(b"|")[4] == b"E"
    assert check_ack(reply) == code


def test_an_oversized_frame_is_rejected_ar():
    code, reply = hl7.nack_acknowledgement(FrameError("MLLP frame of 2000000 bytes exceeds the "
                                                      "1048576-byte cap", b"\x00" * 256))
    assert code == "AR"
    assert segments(reply) == [
        b"MSH|^~\\&|||||20240102030405||ACK|TESTPFX0-1|P|2.5", b"MSA|AR",
        b"ERR|||207^Application internal error^HL70357|E||||MLLP frame of 2000000 bytes "
        b"exceeds the 1048576-byte cap"]


def test_usable_and_ignored_messages_are_answered_aa_under_the_hl7_policy():
    assert hl7.nack_acknowledgement(CONTRACT_ADMIT)[0] == "AA"
    assert hl7.nack_acknowledgement(CONTRACT_RESULT)[0] == "AA"
    other = CONTRACT_ADMIT.replace(b"ADT^A01", b"ADT^A02")     # not used: journaled, ignored
    assert hl7.nack_acknowledgement(other)[0] == "AA"


def test_the_verdict_uses_the_feed_profile():
    raw = CONTRACT_RESULT.replace(b"|SN|CREATININE||94.11504200406928",
                                  b"|NM|CREATININE||1.1|mg/dL")
    assert hl7.verdict(raw, FeedProfile(units={"umol/l": 1.0}))[0] == "AE"
    assert hl7.verdict(raw)[0] == "AA"      # the default profile knows mg/dL


def test_the_reason_is_escaped_and_kept_ascii():
    err = hl7.HL7Error("bad |value^ ~x& \\y µmol/L\nnext line")
    reply = hl7.acknowledgement(engine_result(b"2.5"), "AE", err)
    assert check_ack(reply) == "AE"
    erri = segments(reply)[2]
    assert erri.split(b"|")[8] == (b"bad \\F\\value\\S\\ \\R\\x\\T\\ \\E\\y \\XC2B5\\mol/L"
                                   b"\\.br\\next line")
    assert unescape(erri.split(b"|")[8].decode("ascii")) == str(err)
    parsed = oracle.parse(reply.decode("ascii"))      # python-hl7 reads \X..\ as Latin-1
    assert parsed.unescape(str(parsed.segment("ERR")[8])).startswith("bad |value^ ~x& \\y ")


# --- every ACK: the strict hospital parser and python-hl7 agree -----------------------------

mrns = st.integers(min_value=100, max_value=999_999_999).map(str)
ids = st.text(alphabet="ABCDEFGHIJ0123456789-.", min_size=0, max_size=20)
versions = st.sampled_from(["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", ""])
apps = st.text(alphabet="ABCDEFGHIJKLMNOP QRS-_.0123456789", max_size=12)
values = st.sampled_from(["94.1", "high", "-3", ""])


@given(mrns, ids, versions, apps, apps, apps, apps, values, st.sampled_from(["accept", "hl7"]))
def test_every_ack_passes_the_strict_parser_and_reads_back(mrn, control, version, sa, sf, ra,
                                                           rf, value, policy):
    raw = (f"MSH|^~\\&|{sa}|{sf}|{ra}|{rf}|20240331012700||ORU^R01^ORU_R01|{control}|P|"
           f"{version}\rPID|1||{mrn}\rOBR|1||||||20240331012700\r"
           f"OBX|1|NM|CREATININE||{value}|umol/L\r").encode()
    if policy == "accept":
        code, reply = "AA", hl7.acknowledgement(raw)
    else:
        code, reply = hl7.nack_acknowledgement(raw)
    assert check_ack(reply) == code
    m = oracle.parse(reply.decode("ascii"))
    msh, msa = m.segment("MSH"), m.segment("MSA")
    assert [str(msh[i]) for i in (3, 4, 5, 6)] == [ra, rf, sa, sf]
    assert str(msh[7]) == NOW.decode()
    assert str(msh[9][0][0]) == "ACK" and str(msh[9][0][1]) == "R01"
    assert str(msh[9]).endswith("^ACK") == (version not in ("2.3",))
    assert str(msh[10]).startswith("TESTPFX0-")
    assert str(msh[11]) == "P" and str(msh[12]) == (version or "2.5")
    assert str(msa[1]) == code
    assert (str(msa[2]) if len(msa) > 2 else "") == control
    if code != "AA":
        err = m.segment("ERR")
        if version in ("2.3", "2.3.1", "2.4"):
            assert str(err[1]).startswith("^^^1")
        else:
            assert str(err[3]).endswith("^HL70357") and str(err[4]) == "E"


def test_a_line_feed_before_the_first_carriage_return_ends_the_msh():
    raw = b"MSH|^~\\&|A|B|C|D|20240101000000||ADT^A01|X1|P|2.5\nPID|1||1|\rOBX|1\r"
    assert hl7.acknowledgement(raw) == (
        b"MSH|^~\\&|C|D|A|B|20240102030405||ACK^A01^ACK|TESTPFX0-1|P|2.5\rMSA|AA|X1\r")
    short = b"MSH|^~\\&|A|B|C|D|20240101000000||ADT^A01|X1\nPID|1||1|||||\rOBX|1\r"
    assert check_ack(hl7.acknowledgement(short)) == "AA"
    assert segments(hl7.acknowledgement(short))[1] == b"MSA|AA|X1"
