from hypothesis import given
from hypothesis import strategies as st

from aki_alert.mllp import END, START, FrameDecoder, FrameError, frame

# Payloads never contain the framing bytes (HL7 text is printable plus \r).
payloads = st.binary(min_size=0, max_size=300).map(
    lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    parts, last = [], 0
    for p in points:
        parts.append(data[last:p])
        last = p
    parts.append(data[last:])
    return parts


@given(st.lists(payloads, max_size=8), st.lists(st.integers(min_value=0), max_size=20))
def test_any_split_yields_the_same_frames(messages, cuts):
    stream = b"".join(frame(m) for m in messages)
    d = FrameDecoder()
    out = []
    for part in split_at(stream, cuts):
        out += d.feed(part)
    assert out == messages
    assert d.pending == 0


@given(st.lists(payloads, min_size=1, max_size=5), st.binary(max_size=40))
def test_junk_between_frames_is_dropped_and_counted(messages, junk):
    junk = junk.replace(b"\x0b", b"")
    stream = b"".join(junk + frame(m) for m in messages)
    d = FrameDecoder()
    assert d.feed(stream) == messages
    assert d.junk_bytes == len(junk) * len(messages)


def test_several_frames_in_one_read():
    d = FrameDecoder()
    assert d.feed(frame(b"a") + frame(b"b") + frame(b"c")) == [b"a", b"b", b"c"]


def test_end_marker_split_across_reads():
    d = FrameDecoder()
    assert d.feed(START + b"abc\x1c") == []
    assert d.feed(b"\x0d") == [b"abc"]


def test_lone_0x1c_inside_payload_is_not_an_end():
    d = FrameDecoder()
    assert d.feed(START + b"a\x1cb" + END) == [b"a\x1cb"]


def test_a_frame_cut_short_restarts_at_the_next_start_byte():
    d = FrameDecoder()
    assert d.feed(START + b"lost" + START + b"kept" + END) == [b"kept"]


@given(st.integers(min_value=1, max_value=50))
def test_oversized_frame_becomes_an_error_and_the_stream_goes_on(chunk):
    d = FrameDecoder(max_frame=100)
    stream = frame(b"x" * 500) + frame(b"next")
    out = []
    for i in range(0, len(stream), chunk):
        out += d.feed(stream[i:i + chunk])
    assert len(out) == 2
    assert isinstance(out[0], FrameError)
    assert "500 bytes" in out[0].reason and "100-byte cap" in out[0].reason
    assert out[0].prefix.startswith(b"x")
    assert out[1] == b"next"
    assert d.pending < 200
