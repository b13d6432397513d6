from hypothesis import given
from hypothesis import strategies as st

from aki_alert.store.msglog import DELIVERED, FRAME_ERROR, MESSAGE, MessageLog, decode, encode

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
