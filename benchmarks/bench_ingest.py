"""Per-message cost of the service in process (parse + store + detect + decide), and where it goes.

    python -m benchmarks.bench_ingest [--days 365] [--durability process]

A generated year (10,000 patients, seed 1) in a temporary directory, deleted afterwards: its
history is imported into a fresh SqliteStore, then every message goes through what the
service and its front process do for it (front.py, service.py), in one process, without the
socket and the pipe between them: decode its MLLP frame, `Durable.accept` (message log append,
ACK: the front's part), the two metric updates, `Durable.settle` (journal, parse, state, judge,
page decision: the service's), and `Durable.flush` when a batch is due. Each message is timed
alone; the batch commits are timed apart and amortised over all messages.

Baseline, same messages: what an acknowledge-only client does for one (decode the frame, build
the ACK). Where the time goes, per result: a second pass of the whole path, over its own copy
of the imported state, times each stage in place: the connection's `execute` per statement
kind, the detector's `judge`, the message log's `append`, `hl7.parse` and `message_digest`
(wrapped there only, so the wrappers do not distort the first pass). The metric updates are
timed alone (a loop over the same results), and so, for comparison, are the log append, the
parse and the digest: alone they are 1.5-2× cheaper than in place, where the other stages
have just evicted them from the caches. "rest" is the whole minus the stages: the Python of
Ingest and Durable around them, and the metric updates' own in-place surcharge.

Every pass runs batch by batch (BATCH_MAX messages) in turn, so the drift of this machine's
speed over a run hits them alike. GC is off while timing.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache, partial
from pathlib import Path

from aki_alert import counted, hl7, ingest, metrics
from aki_alert.detect.model import load_model
from aki_alert.durable import BATCH_MAX, Durable
from aki_alert.history import ImportSummary, read_history
from aki_alert.hospital.datafiles import read_messages, write_hospital
from aki_alert.hospital.generator import generate
from aki_alert.hl7 import acknowledgement
from aki_alert.ingest import Ingest
from aki_alert.mllp import FrameDecoder, frame
from aki_alert.store.msglog import MESSAGE, MessageLog, SegmentWriter
from aki_alert.store.sqlite import SqliteStore

KINDS = {b"ORU^R01": "result", b"ADT^A01": "admission", b"ADT^A03": "discharge"}
clock = time.perf_counter_ns


def message_kind(m: bytes) -> str:
    head = m[:m.find(b"\r")].split(b"|", 9)
    return KINDS.get(head[8] if len(head) > 8 else b"", "other")


def of_kind(xs: list, kinds: list[str], kind: str) -> list:
    """The items of xs whose message is of `kind` ("all": every one)."""
    return [x for x, k in zip(xs, kinds, strict=True) if kind in (k, "all")]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


@contextmanager
def gc_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def per_call(fn: Callable, items: list) -> list[float]:
    """µs of fn(item) for every item."""
    out = []
    for x in items:
        t = clock()
        fn(x)
        out.append((clock() - t) / 1000)
    return out


# --- the service's path -----------------------------------------------------------------------
def imported_state(tmp: Path, days: int) -> tuple[list[bytes], SqliteStore]:
    """The generated year's messages, and a state holding its imported history."""
    paths = write_hospital(tmp / "hospital", generate(days=days, patients=10_000, seed=1))
    store = SqliteStore(str(tmp / "imported.db"))
    store.import_results(read_history(str(paths["history"]), ImportSummary()))
    return read_messages(paths["messages"]), store


def service(tmp: Path, name: str, imported: SqliteStore, durability: str, detector) -> Durable:
    """A Durable as `aki-alert serve` builds it, over a fresh copy of the imported state, with
    the front's message log writer of its own (both halves of the service in one process)."""
    imported.backup_to(str(tmp / f"{name}.db"))
    store = SqliteStore(str(tmp / f"{name}.db"), durability)
    (tmp / name).mkdir()
    sync = durability == "machine"
    durable = Durable(store, Ingest(store, detector), str(tmp / name), sync=sync)
    durable.frames = SegmentWriter(str(tmp / name), sync)
    return durable


class Reader:
    """What the front and the service's applier do per message, in one thread, without the
    socket and the pipe: µs per message, and µs per batch commit."""

    def __init__(self, durable: Durable) -> None:
        self.durable = durable
        self.decoder = FrameDecoder()
        self.per_message: list[float] = []
        self.commits: list[float] = []
        self.pages = 0

    def run(self, frames: list[bytes]) -> None:
        durable = self.durable
        for data in frames:
            t = clock()
            received = time.perf_counter()
            for item in self.decoder.feed(data):
                durable.accept(item, received)
                metrics.child(metrics.ACKS, "AA").inc()
                metrics.PROCESSING.observe(time.perf_counter() - received)
                self.pages += len(durable.settle())
            done = clock()
            self.per_message.append((done - t) / 1000)
            if durable.due:
                self.flush(done)

    def flush(self, since: int) -> None:
        self.pages += len(self.durable.flush())
        self.commits.append((clock() - since) / 1000)


# --- the instrumented pass: each stage timed in place -----------------------------------------
Events = list[tuple[str, float]]          # (stage, µs) in call order


class Timed:
    """Calls fn and records the µs of each call as `stage` in `events`."""

    def __init__(self, fn: Callable, stage: str, events: Events) -> None:
        self.fn, self.stage, self.events = fn, stage, events

    def __call__(self, *args):
        t = clock()
        out = self.fn(*args)
        self.events.append((self.stage, (clock() - t) / 1000))
        return out


@lru_cache(maxsize=None)
def statement_kind(sql: str) -> str:
    """'SQL INSERT journal', 'SQL SELECT results', 'SQL SAVEPOINT', …: verb and table."""
    words = sql.split()
    for before, table in zip(words, words[1:]):  # noqa: B905 - one shorter
        if before.upper() in ("INTO", "FROM", "UPDATE"):
            return f"SQL {words[0].upper()} {table}"
    return f"SQL {words[0].upper()}"


class TimedConnection:
    """The store's sqlite3 connection with `execute` timed per statement kind (up to a
    SELECT's first row: the rest is fetched outside it)."""

    def __init__(self, db, events: Events) -> None:
        self._db = db
        self.events = events

    def execute(self, sql: str, params: tuple = ()):
        t = clock()
        cur = self._db.execute(sql, params)
        self.events.append((statement_kind(sql), (clock() - t) / 1000))
        return cur

    def __getattr__(self, name: str):
        return getattr(self._db, name)


class TimedDetector:
    """A detector whose `judge` is timed; keeps what the metric updates of each result need."""

    def __init__(self, detector, events: Events) -> None:
        self.detector = detector
        self.events = events
        self.judged: list[tuple] = []     # what Ingest notes of each (counted.FIELDS of them)

    def judge(self, patient, time_: int, value: float):
        t = clock()
        j = self.detector.judge(patient, time_, value)
        self.events.append(("detector judge (features, model, NHS)", (clock() - t) / 1000))
        self.judged.append((value, j.score, j.positive,
                            (not patient.times) + 2 * (patient.birth is None), False))
        return j


@contextmanager
def replaced(module, name: str, timed: Timed) -> Iterator[None]:
    """module.name is `timed` for the duration (the reader's pass runs the original)."""
    setattr(module, name, timed)
    try:
        yield
    finally:
        setattr(module, name, timed.fn)


class Instrumented:
    """The service's path again, over its own copy of the state, with the SQL statements,
    `judge`, the message log's `append`, `hl7.parse` and `message_digest` timed in place."""

    def __init__(self, tmp: Path, imported: SqliteStore, durability: str, detector) -> None:
        self.events: Events = []
        self.detector = TimedDetector(detector, self.events)
        self.durable = service(tmp, "timed", imported, durability, self.detector)
        store, frames = self.durable.store, self.durable.frames
        store.db = TimedConnection(store.db, self.events)
        frames.append = Timed(frames.append, "message log append (write)", self.events)
        self.parse = Timed(hl7.parse, "hl7.parse", self.events)
        self.digest = Timed(ingest.message_digest, "message_digest (blake2b)", self.events)

    def run(self, msgs: list[bytes], kinds: list[str], stages: dict[str, list[float]]) -> None:
        """Adds to `stages` the µs of every timed call a result makes (the batch commits
        excluded: the reader times them)."""
        durable, events = self.durable, self.events
        with replaced(hl7, "parse", self.parse), replaced(ingest, "message_digest", self.digest):
            for m, kind in zip(msgs, kinds, strict=True):
                mark = len(events)
                durable.accept(m, time.perf_counter())
                durable.settle()
                if kind == "result":
                    for stage, us in events[mark:]:
                        stages[stage].append(us)
                if durable.due:
                    durable.flush()
        del events[:]


# --- the stages alone -------------------------------------------------------------------------
def ack_only(m: bytes) -> None:
    """The baseline: an acknowledge-only client's work for one message."""
    FrameDecoder().feed(frame(m))
    acknowledgement(m)


_notes: list = []
_counts: list = []


def metric_updates(note: tuple) -> None:
    """The metric work of one result: service.on_frame's two updates, then Ingest's count of
    the message and its notes of the judgement and the decision (counted with its batch:
    `stages_alone`)."""
    metrics.child(metrics.ACKS, "AA").inc()
    metrics.PROCESSING.observe(1e-5)                 # a typical receive-to-ACK time
    metrics.child(metrics.MESSAGES, "result").inc()
    _notes.extend(note)
    _counts.append(metrics.child(metrics.DECISIONS, "applied"))


METRICS = "metric updates (Prometheus), alone"


def stages_alone(results: list[bytes], notes: list[tuple], msglog: MessageLog,
                 alone: dict[str, list[float]]) -> None:
    """Adds the µs of each stage run alone, in a loop over one batch's results, to `alone`."""
    alone["message log append (write)"] += per_call(partial(msglog.append, MESSAGE), results)
    msglog.clear()                                   # as the batch's commit does
    alone["hl7.parse"] += per_call(hl7.parse, results)
    alone["message_digest (blake2b)"] += per_call(ingest.message_digest, results)
    each = per_call(metric_updates, notes)
    t = clock()
    counted.count_judged(_notes, "model", None)   # at the batch's commit, spread over its results
    counted.count_series(_counts)
    _notes.clear()
    _counts.clear()
    share = (clock() - t) / 1000 / len(each)
    alone[METRICS] += [us + share for us in each]


# --- one run ----------------------------------------------------------------------------------
class Run:
    """Every pass over the same messages, batch by batch in turn."""

    def __init__(self, tmp: Path, days: int, durability: str, detector) -> None:
        self.msgs, imported = imported_state(tmp, days)
        self.kinds = [message_kind(m) for m in self.msgs]
        self.reader = Reader(service(tmp, "main", imported, durability, detector))
        self.timed = Instrumented(tmp, imported, durability, detector)
        self.msglog = MessageLog(str(tmp / "alone.log"))
        self.baseline: list[float] = []
        self.in_place: dict[str, list[float]] = defaultdict(list)
        self.alone: dict[str, list[float]] = defaultdict(list)
        imported.close()

    def measure(self) -> None:
        frames = [frame(m) for m in self.msgs]      # as they arrive from the socket
        self.warm_up()
        with gc_off():
            for i in range(0, len(self.msgs), BATCH_MAX):
                self.batch(self.msgs[i:i + BATCH_MAX], self.kinds[i:i + BATCH_MAX],
                           frames[i:i + BATCH_MAX])
            self.reader.flush(clock())              # the last, partial batch
        self.timed.durable.flush()
        for durable in (self.reader.durable, self.timed.durable):
            durable.store.close()
            durable.close()
        self.msglog.close()

    def warm_up(self) -> None:
        results = of_kind(self.msgs, self.kinds, "result")[:500]
        per_call(ack_only, results)
        stages_alone(results, [(80.0, 0.1, False, 0, False)] * 500, self.msglog,
                     defaultdict(list))

    def batch(self, msgs: list[bytes], kinds: list[str], frames: list[bytes]) -> None:
        self.baseline += per_call(ack_only, msgs)
        self.reader.run(frames)
        start = len(self.timed.detector.judged)
        self.timed.run(msgs, kinds, self.in_place)
        stages_alone(of_kind(msgs, kinds, "result"), self.timed.detector.judged[start:],
                     self.msglog, self.alone)


# --- report -----------------------------------------------------------------------------------
def print_messages(run: Run) -> None:
    kinds, base, reader = run.kinds, run.baseline, run.reader
    b50, b99 = pct(base, 0.5), pct(base, 0.99)
    print(f"{'per message':34}{'n':>7}{'p50 µs':>9}{'p99 µs':>9}{'mean µs':>9}"
          f"{'p50 ×ack':>10}{'p99 ×ack':>10}")
    print(f"{'ack-only: decode + ACK (baseline)':34}{len(base):>7}{b50:>9.2f}{b99:>9.2f}"
          f"{mean(base):>9.2f}{1:>10.2f}{1:>10.2f}")
    for kind in ("result", "admission", "discharge", "all"):
        xs = of_kind(reader.per_message, kinds, kind)
        if xs:
            p50, p99 = pct(xs, 0.5), pct(xs, 0.99)
            print(f"{kind:34}{len(xs):>7}{p50:>9.2f}{p99:>9.2f}{mean(xs):>9.2f}"
                  f"{p50 / b50:>10.2f}{p99 / b99:>10.2f}")
    commits = reader.commits
    print(f"{'commit (flush), per batch':34}{len(commits):>7}{pct(commits, 0.5):>9.2f}"
          f"{pct(commits, 0.99):>9.2f}{mean(commits):>9.2f}")
    print(f"{'commit, amortised per message':34}{len(kinds):>7}{'':>18}"
          f"{sum(commits) / len(kinds):>9.2f}   ({reader.pages} pages decided)")


def stage_rows(run: Run) -> tuple[list[tuple], float]:
    """(stage, calls per result, per-call µs or None, µs per result, µs per result alone or
    None) rows, and the whole."""
    n = run.kinds.count("result")
    whole_results = of_kind(run.reader.per_message, run.kinds, "result")
    commit = sum(run.reader.commits) / len(run.kinds)
    whole = mean(whole_results) + commit
    base = of_kind(run.baseline, run.kinds, "result")
    alone = {name: sum(xs) / n for name, xs in run.alone.items()}
    stages = {**run.in_place, METRICS: run.alone[METRICS]}
    rows = [("decode frame + build ACK (baseline)", 1.0, base, mean(base), mean(base))]
    rows += sorted(((name, len(xs) / n, xs, sum(xs) / n, alone.get(name))
                    for name, xs in stages.items()), key=lambda r: -r[3])
    rows.append(("commit (flush), amortised", 0.0, None, commit, None))
    rows.append(("rest: Python of Ingest, Durable", 0.0, None, whole - sum(r[3] for r in rows),
                 None))
    rows.append(("whole: reader pass + commit", 1.0, whole_results, whole, None))
    return rows, whole


def print_stages(run: Run) -> None:
    rows, whole = stage_rows(run)
    base = rows[0][3]
    print(f"\nwhere the time goes, per result ({run.kinds.count('result')} results; timed in "
          f"place unless alone)")
    print(f"{'stage':40}{'calls':>6}{'p50 µs':>9}{'p99 µs':>9}{'µs/result':>10}{'share':>7}"
          f"{'×ack':>7}{'alone µs/result':>17}")
    for name, calls, xs, per_result, alone in rows:
        timed = (f"{calls:>6.2f}{pct(xs, 0.5):>9.2f}{pct(xs, 0.99):>9.2f}" if xs
                 else f"{'':>24}")
        print(f"{name:40}{timed}{per_result:>10.2f}{per_result / whole:>7.1%}"
              f"{per_result / base:>7.2f}{'-' if alone is None else f'{alone:.2f}':>17}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--durability", choices=("process", "machine"), default="process")
    args = ap.parse_args()
    detector = load_model(None)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(Path(tmp), args.days, args.durability, detector)
        run.measure()
    print(f"{len(run.msgs)} messages, {args.days} days, model {detector.version}, "
          f"durability {args.durability}, commits every {BATCH_MAX} messages")
    print_messages(run)
    print_stages(run)


if __name__ == "__main__":
    main()
