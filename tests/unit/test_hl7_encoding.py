"""Properties of the HL7 encoding layer and of what the parser makes of it: escapes round trip,
any separators a message may declare read as the defaults, SN values, PID-3's repetitions, and
no exception but HL7Error whatever the bytes."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from aki_alert import hl7
from aki_alert.hl7.encoding import (
    DEFAULT, EncodingError, Separators, components, first, separators, unescape,
)
from aki_alert.timeutil import parse_hl7_time

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def escape(text: str, seps: Separators = DEFAULT) -> str:
    """`text` as a sender puts it in a field: each separator character as its escape sequence,
    and CR / LF (which would end the segment) as `\\Xhh\\`."""
    e = seps.escape
    names = {e: "E", seps.field: "F", seps.component: "S", seps.subcomponent: "T",
             seps.repetition: "R"}
    out = []
    for ch in text:
        if ch in names:
            out.append(f"{e}{names[ch]}{e}")
        elif ch in "\r\n":
            out.append(f"{e}X{ord(ch):02X}{e}")
        else:
            out.append(ch)
    return "".join(out)


# Five distinct separator characters, as MSH-1 and MSH-2 may declare them: printable ASCII,
# neither letters nor digits nor space.
separator_sets = st.permutations(string.punctuation).map(
    lambda cs: Separators(cs[0], cs[1], cs[2], cs[3], cs[4]))


@given(st.text(), separator_sets)
@example("a|b^c&d~e\\f\\", DEFAULT)
@example("\\E\\ \\F\\ \\X41\\", DEFAULT)
@example("line one\rline two\n", DEFAULT)
def test_escape_round_trip(text, seps):
    escaped = escape(text, seps)
    for sep in (seps.field, seps.component, seps.repetition, seps.subcomponent):
        assert sep not in escaped            # so it survives the splitting into fields
    assert "\r" not in escaped and "\n" not in escaped
    assert unescape(escaped, seps) == text
    # What the service reads of a component: unescaped, then stripped.
    assert first(escaped, seps) == text.strip()
    assert components(escaped + seps.component + escaped, seps) == [text.strip()] * 2


@given(st.text())
def test_hex_escape_is_the_utf8_text(text):
    assert unescape(f"\\X{text.encode().hex().upper()}\\") == text
    assert unescape(f"a\\X{text.encode().hex()}\\b") == f"a{text}b"


@given(st.binary())
def test_hex_escape_of_any_bytes_never_raises(data):
    assert unescape(f"\\X{data.hex()}\\") == data.decode("utf-8", "replace")


@given(st.text(alphabet="\\EFSTRXH0123456789ABCDEF.brsp ", max_size=30))
def test_unescape_of_anything_is_text(text):
    # Unknown, odd-length, non-hex and unterminated sequences are kept, never raise.
    assert isinstance(unescape(text), str)


def test_unknown_and_unterminated_sequences_are_kept_as_sent():
    assert unescape("a\\Q\\b") == "a\\Q\\b"
    assert unescape("a\\X4\\b") == "a\\X4\\b"          # odd number of hex digits
    assert unescape("a\\XZZ\\b") == "a\\XZZ\\b"        # not hex
    assert unescape("50\\F") == "50\\F"                 # no closing escape
    assert unescape("a\\.br\\b\\H\\c\\N\\") == "a\nbc"


# --- any separators ------------------------------------------------------------------------

# Messages as a sender writes them with the default separators (no escapes in them: their
# leaves are escaped when rendered, so that any separator may be chosen).
TEMPLATES = {
    "result": [
        "MSH|^~\\&|WINPATH|RVJ PATHOLOGY|ICE|RVJ|20240307112233||ORU^R01^ORU_R01|WP01|P|2.5.1",
        "PID|1||9434765919^^^NHS^NH~1001^^^RVJ&2.16.840.1.113883.2.1.3.2.4.18.48&ISO^MR||"
        "BROWN^JAMES||19500202|M",
        "PV1|1|I|GERI^WARD 9^^RVJ",
        "OBR|1||24.7712345.B|UE^Urea and Electrolytes^L|||20240307083000",
        "OBX|1|NM|NA^Sodium^L||138|mmol/L|133-146||||F",
        "OBX|2|SN|14682-9^Creatinine^LN||<^10|umol/L|59-104|L|||F",
        "OBR|2||24.7712346.B|UE^Urea and Electrolytes^L|||20240307190000.5+0000",
        "OBX|1|NM|2160-0^Creatinine [Mass/volume] in Serum or Plasma^LN||1.35|mg/dL|||||C",
        "NTE|1|L|Phoned to ward 9 at 19:40",
    ],
    "update": [
        "MSH|^~\\&|IPM|RVJ|AKIALERT|RVJ|20240311090000||ADT^A08^ADT_A01|IPM01|P|2.4",
        "EVN|A08|20240311090000",
        "PID|1||1001^^^RVJ^MR~9434765919^^^NHS^NH||{name}^ANNE^^^MRS||19580412|F",
    ],
    "merge": [
        "MSH|^~\\&|IPM|RVJ|AKIALERT|RVJ|20240310143000||ADT^A40^ADT_A39|IPM02|P|2.5.1",
        "EVN|A40|20240310143000",
        "PID|1||1001^^^RVJ^MR~9434765919^^^NHS^NH||BROWN^JAMES||19500202|M",
        "MRG|2002^^^RVJ^MR",
    ],
}


def render(segments: list[str], seps: Separators, leaf=lambda s: s) -> bytes:
    """The template's message with `seps`, every leaf (subcomponent) escaped for them."""
    out = []
    for seg in segments:
        fields = seg.split("|")
        if fields[0] == "MSH":
            head = "MSH" + seps.field + seps.component + seps.repetition + seps.escape \
                + seps.subcomponent
            fields = fields[2:]
        else:
            head = fields.pop(0)
        rendered = [seps.repetition.join(
            seps.component.join(
                seps.subcomponent.join(escape(leaf(s), seps) for s in comp.split("&"))
                for comp in rep.split("^"))
            for rep in field.split("~")) for field in fields]
        out.append(seps.field.join([head, *rendered]))
    return ("\r".join(out) + "\r").encode()


@settings(max_examples=200)
@given(separator_sets, st.sampled_from(sorted(TEMPLATES)),
       st.text(alphabet=string.printable + "éøµ", min_size=1, max_size=20))
@example(Separators("#", "^", "~", "\\", "&"), "result", "X")
@example(Separators("|", "$", "~", "\\", "&"), "result", "X")
@example(Separators("-", ".", "/", "<", "^"), "result", "X")
def test_any_separators_read_as_the_defaults(seps, template, name):
    assume(name.strip())
    segments = TEMPLATES[template]
    fill = {"{name}": name}
    default = hl7.parse(render(segments, DEFAULT, lambda s: fill.get(s, s)))
    assert separators(render(segments, seps).decode()) == seps
    assert hl7.parse(render(segments, seps, lambda s: fill.get(s, s))) == default
    if template == "result":
        assert default.mrn == "1001"
        assert [(o.time_text, round(o.value, 2), o.status, o.comparator)
                for o in default.observations] == [
            ("20240307083000", 10.0, "F", "<"), ("20240307190000", 119.34, "C", "")]
    elif template == "update":
        assert default.name == f"{name.strip()} ANNE MRS"


# --- values ------------------------------------------------------------------------------

def result(obx5: str, obx2: str = "SN", unit: str = "umol/L") -> bytes:
    return ("MSH|^~\\&|LAB|RVJ|||20240310081500||ORU^R01|C1|P|2.5\rPID|1||80808\r"
            "OBR|1||||||20240310074500\r"
            f"OBX|1|{obx2}|14682-9^Creatinine^LN||{obx5}|{unit}|||||F\r").encode()


numbers = st.decimals(min_value=10, max_value=5000, places=3, allow_nan=False)


@given(st.sampled_from(["", "<", ">", "<=", ">=", "="]), numbers,
       st.sampled_from(["", " "]))
def test_sn_values_parse_to_comparator_and_number(comparator, number, space):
    expected = ("" if comparator == "=" else comparator, float(number))
    for obx5, obx2 in ((f"{comparator}{space}^{space}{number}", "SN"),
                       (f"{comparator}^{number}^", "SN"),      # a trailing empty component
                       (f"{comparator}{space}{number}", "NM"),  # a text form: "<10"
                       (f"{comparator}{number}", "ST")):
        obs, = hl7.parse(result(obx5, obx2)).observations
        assert (obs.comparator, obs.value) == expected, obx5


@given(st.sampled_from(["<", ">", "="]), numbers, numbers)
def test_sn_ranges_and_ratios_are_dead_letters(comparator, a, b):
    for obx5 in (f"^{a}^-^{b}", f"^{a}^/^{b}", f"{comparator}^{a}^:^{b}"):
        try:
            hl7.parse(result(obx5))
        except hl7.HL7Error as e:
            assert "range or ratio" in str(e)
        else:
            raise AssertionError(f"{obx5} parsed")


# --- PID-3 ---------------------------------------------------------------------------------

ids = st.text(alphabet=string.ascii_uppercase + string.digits, min_size=1, max_size=12)
others = st.lists(st.tuples(ids, st.sampled_from(["NHS", "RVJ", "RJ1", ""]),
                            st.sampled_from(["NH", "PI", "PN", "AN", "VN", "DL", "PT"])),
                  max_size=5)


@given(ids, st.sampled_from(["RVJ", "", "RVJ&2.16.840.1.113883&ISO"]), others, st.randoms())
def test_pid3_picks_the_mr_repetition_in_any_order(mrn, authority, rest, rnd):
    reps = [f"{mrn}^^^{authority}^MR"] + [f"{i}^^^{a}^{t}" for i, a, t in rest]
    rnd.shuffle(reps)
    msg = ("MSH|^~\\&|IPM|RVJ|||20240310143000||ADT^A08|C1|P|2.4\r"
           f"PID|1||{'~'.join(reps)}||BROWN^JAMES||19500202|M\r").encode()
    assert hl7.parse(msg).mrn == mrn


# --- never anything but HL7Error ---------------------------------------------------------

PROFILES = [hl7.DEFAULT_PROFILE] + [hl7.load_profile(str(p))
                                    for p in sorted((CORPUS / "profiles").glob("*.toml"))]
SEEDS = sorted(CORPUS.glob("*.hl7"))
NOISE = [b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"MSH|^~\\&|", b"\rOBX|1|SN|", b"\\X",
         b"\\S\\", b"<^", b"^^", b"~~", b"0", b"9", b"-", b".", b"\xc3", b"\xff", b"\x00",
         b"PID|1||", b"\rMRG|", b"\rOBR|1||||||2024", b"C", b"W", b"P", b"D", b"X", b" "]


def mutate(data: bytes, rnd: random.Random, n: int) -> bytes:
    buf = bytearray(data)
    for _ in range(n):
        at = rnd.randrange(len(buf) + 1)
        op = rnd.randrange(4)
        if op == 0:
            buf[at:at] = rnd.choice(NOISE)
        elif op == 1:
            del buf[at:at + rnd.randrange(1, 8)]
        elif op == 2 and buf:
            buf[min(at, len(buf) - 1)] = rnd.randrange(256)
        else:                                   # splice a piece of another message in
            other = rnd.choice(SEEDS).read_bytes()
            start = rnd.randrange(len(other))
            buf[at:at] = other[start:start + rnd.randrange(1, 40)]
    return bytes(buf)


@settings(max_examples=500)
@given(st.sampled_from(SEEDS), st.randoms(use_true_random=False), st.integers(1, 6))
def test_mutated_corpus_messages_parse_or_raise_hl7error(seed, rnd, n):
    raw = mutate(seed.read_bytes(), rnd, n)
    for profile in PROFILES:
        try:
            event = hl7.parse(raw, profile)
        except hl7.HL7Error:
            continue
        if isinstance(event, hl7.Result):
            for o in event.observations:
                parse_hl7_time(o.time_text)
                assert o.value is None or hl7.MIN_CREATININE <= o.value <= hl7.MAX_CREATININE


def test_a_truncation_character_in_msh2_is_not_a_separator():
    # v2.7 adds a fifth encoding character (truncation, `#`); any separators may carry it.
    for text in ("MSH|^~\\&#|LAB", "MSH|^~\\$#|LAB"):
        seps = separators(text)
        assert (seps.field, seps.component, seps.repetition, seps.escape[:1]) == (
            "|", "^", "~", "\\")
        assert seps.subcomponent in "&$"
    with pytest.raises(EncodingError):
        separators("MSH|^~\\$#!|LAB")                 # six characters: not HL7
