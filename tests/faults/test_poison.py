"""Poison messages mixed into the stream, and frames the hospital truncates (corrupt_every)."""

from __future__ import annotations

import random

import pytest

from aki_alert.detect.nhs import NhsDetector
from aki_alert.hospital.simulator import MllpFaults, _result_key
from aki_alert.mllp import frame
from aki_alert.timeutil import format_hl7_time

from .harness import assert_journal_complete, finish, outcome, query

pytestmark = pytest.mark.timeout(90)

WHEN = "20240415120000"
CORRUPT_EVERY = 50


def msh(kind: str) -> str:
    return f"MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||{WHEN}||{kind}|||2.5\r"


def oru(mrn: str, ts: str, value: str, test: str = "CREATININE",
        kind: str = "ORU^R01") -> bytes:
    return (msh(kind) + f"PID|1||{mrn}\rOBR|1||||||{ts}\rOBX|1|SN|{test}||{value}\r").encode()


# The simulator cannot send a result whose OBR-7 it cannot parse (its scorer reads every
# `|ORU^R01|` message's time); with a third component in MSH-9 it passes it on unread, and
# the service still takes it for an ORU^R01.
ORU_UNSCORED = "ORU^R01^ORU_R01"


def poisoned(stream, seed: int = 9) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The stream with poison and harmless unknown messages inserted: (messages, poison,
    harmless). Value poisons target AKI patients an hour before their AKI result, sent just
    before it: stored as a number, any of them would move that patient's baseline or page."""
    rng = random.Random(seed)
    akis = [r for r in stream.rows if r.aki]
    poison: list[tuple[int, bytes]] = []
    index = {k: i for i, m in enumerate(stream.messages) if (k := _result_key(m))}

    def before_aki(value: str) -> tuple[int, bytes]:
        r = rng.choice(akis)
        return index[(r.mrn, r.time)], oru(r.mrn, format_hl7_time(r.time - 3600), value)

    n = len(stream.messages)
    garbage = bytes(b for b in rng.randbytes(400) if b not in (0x0B, 0x1C))
    for value in ("HIGH", "", "999999", "-42", "0", "nan", "inf", "1e9", "94.1.5"):
        poison.append(before_aki(value))
    anywhere = [
        garbage,                                                   # random bytes
        b"this is not HL7",
        b"",                                                       # an empty frame
        oru("12AB.345", "20240415110000", "95.2"),                 # MRN with a dot
        oru("", "20240415110000", "95.2"),                         # no MRN
        oru("1234567", "", "95.2", kind=ORU_UNSCORED),             # no sample time
        oru("1234567", "2024041511", "95.2", kind=ORU_UNSCORED),   # a 10-digit time
        (msh("ADT^A01") + "PID|1||1234567||ANN SMITH||19XX0101|F\r").encode(),  # bad birth
        (msh("ADT^A01") + "PV1|1|I\r").encode(),                   # admission without PID
        (msh("") + "PID|1||1234567\r").encode(),                   # no message type
        (msh("ORU^R01") + "PID|1||1234567\rOBR|1||||||20240415110000\rOBX|1|SN|CREATININE||"
         ).encode() + b"9" * (2 << 20),                            # a 2 MiB frame (cap 1 MiB)
    ]
    poison += [(rng.randrange(n), m) for m in anywhere]
    harmless = [(msh("ADT^A02") + "PID|1||1234567\r").encode(),   # a type we do not use
                oru("1234567", "20240415110000", "4.1", test="POTASSIUM")]   # another test
    inserts = poison + [(rng.randrange(n), m) for m in harmless]
    messages = list(stream.messages)
    for i, m in sorted(inserts, key=lambda x: x[0], reverse=True):
        messages.insert(i, m)
    assert len(set(m for _, m in poison)) == len(poison)
    return messages, [m for _, m in poison], harmless


def test_poison_messages_are_acked_set_aside_and_change_nothing(tmp_path, stream, harness):
    """A poison message that was NACKed, not ACKed, or crashed the service would stall or drop
    the connection (connections > 1, nacked > 0); one stored as a result would change that AKI
    patient's judgement (score differs from the clean run); one not kept would be missing from
    the dead letters."""
    messages, poison, harmless = poisoned(stream)
    state = harness.state(tmp_path / "state")
    h = harness.hospital(messages, stream.rows)
    proc = harness.serve(h, state, stream.history)
    finish(h, proc, state, timeout=60)
    drops = dict(h.hospital.drops)
    code, _, log = harness.terminate(proc)
    live = h.score()
    assert code == 0, log[-3000:]
    assert h.hospital.acked == len(messages) and h.hospital.nacked == 0
    assert h.hospital.connections == 1 and not drops, drops
    assert query(state, "SELECT count(*) FROM dead_letters") == len(poison)
    assert query(state, "SELECT count(*) FROM dead_letters WHERE reason IS NULL "
                        "OR reason = ''") == 0
    assert query(state, "SELECT count(*) FROM journal WHERE status = 'ignored'") == len(harmless)
    assert_journal_complete(state, messages)
    assert query(state, "SELECT count(*) FROM dead_letters WHERE kind = 'oversized-frame'") == 1
    assert outcome(live) == outcome(stream.expected), live.summary()
    assert live.pages == len(set(stream.expected_pages))


def truncate(message: bytes) -> bytes:
    """What MllpFaults(corrupt_every) sends in place of a message: its frame cut at 3/5."""
    data = frame(message)
    return data[1:len(data) * 3 // 5]


def corrupted(messages: list[bytes], every: int) -> tuple[list[bytes], set[int]]:
    cut = {i for i in range(len(messages)) if (i + 1) % every == 0}
    return [truncate(m) if i in cut else m for i, m in enumerate(messages)], cut


def test_truncated_frames_are_acked_and_never_applied(tmp_path, stream, harness):
    """The hospital truncates every 50th message's first (and, without a reconnect, only)
    send. The service cannot know what was cut off: it must ACK the stump (so the feed goes on),
    apply nothing of it, and its decisions must equal the offline reference over the stream
    as delivered. (The cut results are lost for good: the hospital moves on after AA.)"""
    delivered, cut = corrupted(stream.messages, CORRUPT_EVERY)
    expected_pages, expected = stream.expect(NhsDetector(), delivered)
    state = harness.state(tmp_path / "state")
    h = harness.hospital(stream.messages, stream.rows,
                         mllp_faults=MllpFaults(corrupt_every=CORRUPT_EVERY))
    proc = harness.serve(h, state, stream.history)
    finish(h, proc, state, timeout=60)
    code, _, log = harness.terminate(proc)
    live = h.score()
    assert code == 0, log[-3000:]
    assert h.hospital.acked == len(delivered) and h.hospital.nacked == 0
    assert h.hospital.connections == 1
    assert_journal_complete(state, delivered)
    # Every stump is set aside (dead) or ignored, never applied; nothing else is.
    assert query(state, "SELECT count(*) FROM journal WHERE status IN ('dead', 'ignored')") \
        == len(cut)
    intact = {k for i, m in enumerate(stream.messages) if i not in cut and (k := _result_key(m))}
    assert query(state, "SELECT count(*) FROM results WHERE source = 'feed'") == len(intact)
    assert outcome(live) == outcome(expected), live.summary()
    assert live.pages == len(set(expected_pages))
    print(f"\n{len(cut)} frames truncated: {live.summary()} "
          f"(clean run: TP {stream.expected.tp} FN {stream.expected.fn})")


def test_truncated_results_are_dead_letters(tmp_path, small_stream, harness):
    """README: a message that can never be processed (… no sample time …) is kept as a dead
    letter. Every truncated frame of this stream is unusable (admissions lose their PID or
    message type, results their OBR-7 and OBX), so each must be a dead letter."""
    s = small_stream
    every = 25
    _, cut = corrupted(s.messages, every)
    extra = (msh("ORU^R01") + "PID|1||1234567\r").encode()     # a result with no OBR, no OBX
    messages = s.messages + [extra]
    state = harness.state(tmp_path / "state")
    h = harness.hospital(messages, s.rows, mllp_faults=MllpFaults(corrupt_every=every))
    proc = harness.serve(h, state, s.history)
    finish(h, proc, state, timeout=60)
    code, _, log = harness.terminate(proc)
    assert code == 0, log[-3000:]
    kinds = [k for k, in state.rows("SELECT DISTINCT kind FROM journal "
                                    "WHERE status = 'ignored'")]
    assert query(state, "SELECT count(*) FROM dead_letters") == len(cut) + 1, kinds



def test_mrns_and_times_in_non_ascii_digits_are_dead_letters(tmp_path, small_stream, harness):
    """Contract §3: MRNs are plain integers, times 12 or 14 digits; the pager answers 400 to
    anything else. Such a message can never be paged, so it must be set aside at once."""
    s = small_stream
    arabic = "١٢٣٤٥٦٧"                       # 1234567 in Arabic-Indic digits
    poison = [oru(arabic, "20240410080000", "80.0"),
              oru(arabic, "20240411080000", "400.0"),     # an NHS AKI for that 'patient'
              oru("１２３４５６７", "20240411090000", "95.0"),
              oru("1234567", "٢٠٢٤٠٤١١١٠٠٠٠٠", "95.0")]
    messages = s.messages + poison
    state = harness.state(tmp_path / "state")
    h = harness.hospital(messages, s.rows)
    proc = harness.serve(h, state, s.history)
    finish(h, proc, state, timeout=60)
    code, _, log = harness.terminate(proc)
    assert code == 0, log[-3000:]
    dead_pages = query(state, "SELECT count(*) FROM outbox WHERE status = 'dead'")
    assert query(state, "SELECT count(*) FROM dead_letters") == len(poison), \
        f"{dead_pages} page(s) refused by the pager"
    assert dead_pages == 0
