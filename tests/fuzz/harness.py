"""One fuzz input through decode → parse → decide, with the invariants checked (no atheris
here: tests/unit/test_fuzz_harness.py runs it over the corpus in `make test`, and
fuzz_ingest.py under atheris in `make fuzz`).

An input is a byte stream as the hospital's connection would carry it: when it holds an MLLP
start byte it goes through the frame decoder (with a small frame cap, so oversized frames are
reached too); otherwise it is split into messages at 0x1C. Each message is acknowledged,
parsed and applied by `Ingest.apply`, once per feed profile, to a SQLite state that is rolled
back after the input (so every input starts from the same empty state, and a crash reproduces
from its input alone).

The invariant: every message ends in a decision (a journal row with a known status) or a dead
letter, never an exception (other than storage failures, which a healthy temporary state does
not have), never a dead letter that hides one of our own errors ("processing error"), and its
ACK is one well-formed MLLP-safe acknowledgement.
"""

from __future__ import annotations

import os

from aki_alert import hl7
from aki_alert.detect.nhs import NhsDetector
from aki_alert.hl7 import acknowledgement
from aki_alert.ingest import Ingest, message_digest
from aki_alert.mllp import END, START, FrameDecoder, FrameError
from aki_alert.store.sqlite import SqliteStore

STATUSES = {"applied", "ignored", "duplicate-result", "dead"}
MAX_MESSAGES = 8        # per input: enough for a result, its correction and a merge
MAX_FRAME = 4096        # the decoder's cap here: an input can exceed it


class Harness:
    def __init__(self, directory: str, profiles: list[hl7.FeedProfile]) -> None:
        self.lanes = []
        for i, profile in enumerate(profiles):
            store = SqliteStore(os.path.join(directory, f"fuzz-{i}.db"))
            self.lanes.append((store, Ingest(store, NhsDetector(), profile=profile)))

    def close(self) -> None:
        for store, _ in self.lanes:
            store.close()

    @staticmethod
    def messages(data: bytes) -> list[bytes | FrameError]:
        if START in data:
            items = FrameDecoder(MAX_FRAME).feed(data)
        else:
            items = data.split(b"\x1c")
        return items[:MAX_MESSAGES]

    def run(self, data: bytes) -> None:
        items = self.messages(data)
        for item in items:
            check_ack(item)
        for store, ing in self.lanes:
            store.begin_batch()
            try:
                for item in items:
                    one(store, ing, item)
            finally:
                store.rollback_batch()
                ing.forget()


def check_ack(item: bytes | FrameError) -> None:
    ack = acknowledgement(item)
    segs = ack.split(b"\r")
    assert len(segs) == 3 and segs[2] == b"", ack
    # In the message's own separators (MSH-1), as a standard ACK is.
    fs = segs[0][3:4]
    assert segs[0].startswith(b"MSH") and segs[1].startswith(b"MSA" + fs + b"AA"), ack
    assert all(b >= 32 and b != 127 for b in ack.replace(b"\r", b"")), ack
    # The ACK goes back in an MLLP frame: a start or end byte inside it would cut it short.
    assert START not in ack and END[:1] not in ack, ack


def one(store: SqliteStore, ing: Ingest, item: bytes | FrameError) -> None:
    if isinstance(item, FrameError):
        before = store.db.execute("SELECT count(*) FROM journal").fetchone()[0]
        ing.set_aside_frame(item)
        after = store.db.execute("SELECT count(*) FROM journal WHERE status = 'dead'"
                                 ).fetchone()[0]
        assert after >= 1 and before <= after
        return
    try:
        event = hl7.parse(item, ing.profile)
    except hl7.HL7Error:
        event = None
    pages = ing.apply(item, 0.0)
    row = store.db.execute("SELECT status, reason FROM journal WHERE digest = ?",
                           (bytearray(message_digest(item)),)).fetchone()
    assert row is not None, "no journal row: the message left no decision"
    status, reason = row
    assert status in STATUSES, status
    assert not (status == "dead" and (reason or "").startswith("processing error")), reason
    if event is None:
        assert status == "dead", status
    for page in pages:
        assert store.db.execute("SELECT status FROM outbox WHERE body = ?",
                                (page.body,)).fetchone() == ("pending",), page
        mrn, _, when = page.body.partition(",")
        assert mrn and "," not in when and when.isdigit(), page.body
