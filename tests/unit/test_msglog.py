import pytest
from hypothesis import given
from hypothesis import strategies as st

from aki_alert.mllp import FrameError
from aki_alert.store import msglog
from aki_alert.store.msglog import (DELIVERED, FRAME_ERROR, MESSAGE, MessageLog, SegmentWriter,
                                    decode, drop_segments, encode, frame_of, log_record,
                                    segment_records, segments)

records = st.lists(st.tuples(st.sampled_from([MESSAGE, FRAME_ERROR, DELIVERED]),
                             st.binary(max_size=300)), max_size=20)


@given(records)
def test_round_trip(recs):
    data = b"".join(encode(k, p) for k, p in recs)
    assert decode(data) == (recs, 0)


@given(records.filter(bool), st.data())
def test_a_torn_tail_is_dropped_and_counted(recs, data):
    whole = b"".join(encode(k, p) for k, p in recs)
    last = len(encode(*recs[-1]))
    cut = data.draw(st.integers(min_value=1, max_value=last - 1)) if last > 1 else 0
    got, torn = decode(whole[:len(whole) - cut])
    assert got == recs[:-1] and torn == last - cut


def test_append_read_clear(tmp_path):
    log = MessageLog(str(tmp_path / "messages.log"))
    log.append(MESSAGE, b"one")
    log.append(FRAME_ERROR, b"why\0two")
    assert log.records() == ([(MESSAGE, b"one"), (FRAME_ERROR, b"why\0two")], 0)
    log.clear()
    log.append(MESSAGE, b"three")
    assert log.records() == ([(MESSAGE, b"three")], 0)
    log.close()
    # Reopened (a restart): what was appended is still there.
    assert MessageLog(str(tmp_path / "messages.log")).records() == ([(MESSAGE, b"three")], 0)


# --- segments: the front's frames -------------------------------------------------------------

def test_a_writer_starts_a_segment_every_segment_records_frames(tmp_path, monkeypatch):
    monkeypatch.setattr(msglog, "SEGMENT_RECORDS", 3)
    w = SegmentWriter(str(tmp_path))
    at = [w.append(MESSAGE, b"m%d" % i) for i in range(7)]
    assert at == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    assert segments(str(tmp_path)) == [0, 1, 2]
    records, torn, last = segment_records(str(tmp_path))
    assert [(p, r[1]) for p, r in records] == [(p, b"m%d" % i) for i, p in enumerate(at)]
    assert (torn, last) == (0, 2)
    # Up to a position: the frames after it are left out, and the segments after its own.
    records, _, last = segment_records(str(tmp_path), upto=(1, 1))
    assert [p for p, _ in records] == at[:5] and last == 1
    w.close()


def test_a_new_writer_never_appends_to_an_existing_segment(tmp_path):
    w = SegmentWriter(str(tmp_path))
    w.append(MESSAGE, b"one")
    w.close()
    with open(msglog.segment_path(str(tmp_path), 0), "ab") as f:
        f.write(b"M\x00\x00")              # a torn tail, from a front killed mid-append
    w = SegmentWriter(str(tmp_path))
    assert w.append(MESSAGE, b"two") == (1, 0)
    records, torn, _ = segment_records(str(tmp_path))
    assert [r for _, r in records] == [(MESSAGE, b"one"), (MESSAGE, b"two")] and torn == 3
    w.close()


def test_drop_segments_deletes_only_those_before(tmp_path, monkeypatch):
    monkeypatch.setattr(msglog, "SEGMENT_RECORDS", 1)
    w = SegmentWriter(str(tmp_path))
    for _ in range(4):
        w.append(MESSAGE, b"x")
    drop_segments(str(tmp_path), before=2)
    assert segments(str(tmp_path)) == [2, 3]
    w.close()


@given(st.one_of(st.binary(max_size=100),
                 st.builds(FrameError, st.text(max_size=20).filter(lambda t: "\0" not in t),
                           st.binary(max_size=100))))
def test_a_frame_survives_its_log_record(item):
    assert frame_of(*log_record(item)) == item


def test_a_segment_that_cannot_be_created_is_tried_again(tmp_path, monkeypatch):
    monkeypatch.setattr(msglog, "SEGMENT_RECORDS", 1)
    w = SegmentWriter(str(tmp_path))
    w.append(MESSAGE, b"one")
    real = msglog.MessageLog

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(msglog, "MessageLog", no_space)
    for _ in range(2):
        with pytest.raises(OSError):
            w.append(MESSAGE, b"two")      # not logged: not acknowledged
    monkeypatch.setattr(msglog, "MessageLog", real)
    assert w.append(MESSAGE, b"two") == (1, 0)
    assert [r for _, r in segment_records(str(tmp_path))[0]] == [(MESSAGE, b"one"),
                                                                  (MESSAGE, b"two")]
    w.close()
