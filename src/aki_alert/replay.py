"""`aki-alert replay FILE`: import retrieved HL7 messages into the state, as the live feed would.

The recovery of the stale-state incident: fetch the day's PAS (and LIMS) messages from the
hospital and put them into the state. Each message goes through `Ingest.handle`, the live
service's own per-message path, so the journal deduplicates exactly as it does for a
re-delivered message: a message already in the state (same bytes, the journal's key) changes
nothing, a result already known for that patient and sample time is recorded as a duplicate
result, and a message that can never be processed becomes a dead letter with its reason.
Replaying a file twice adds nothing the second time.

**Input.** An `.mllp` file (frames `0x0B … 0x1C 0x0D`, as `aki-alert generate` writes), or text:

- one message per line, segments separated by a real `\\r` inside the line (the hospital's PAS
  export), or by the two characters `\\` `r` (a literal escape; HL7 never uses a lowercase `\\r`
  escape, so it cannot be confused with message content);
- or one segment per line (`\\n` or `\\r\\n`), messages separated by blank lines or simply by the
  next line that starts with `MSH|`.

A line that is neither an `MSH` line nor a segment (`ABC|…`) following one is junk: it is fed
to Ingest on its own and so rejected as a dead letter with its reason. Text messages are
normalised to the hospital's wire form (each segment followed by `\\r`), so a message exported
as text has the same digest as the copy the live service received over MLLP. An `.mllp` file's
payloads are used byte for byte.

**Order.** Messages are applied in time order (MSH-7, stable: equal times and messages without
a readable MSH-7 keep their place in the file), so an admission precedes the results it
explains and each result is judged against the results before it.

**Paging.** Replay never talks to the pager. A positive result that opens an AKI episode (or is
paged again in one, repage.py) puts a page in the outbox, as live. By default, a result sampled
more than `--cutoff-hours` (24) before now gets its page recorded as `suppressed`: a page about
a result a day or days old would reach a clinician who can no longer act on it as the emergency
a page announces, and it would arrive unannounced, out of any context; those AKIs are listed in
the report instead, for a clinical review of each patient. Positives within the cutoff are
queued `pending`. With `--page-missed` every page is queued `pending`. The running service sends
pending pages from the outbox at its start, so **restart the service after a replay** (that also
makes it reload the patients it keeps in memory, which the replay changed underneath it).

**The state.** SQLite in `--state-dir` / STATE_DIR, or PostgreSQL with `--state-url` /
STATE_URL, as the service is configured; the same behaviour and report on both. A state of an
older schema is migrated first, as the service does when it opens one.

**Beside the running service.** Each message is its own short transaction (Ingest's). SQLite
allows one writer at a time and the store waits up to 5 s (`busy_timeout`) for the write lock,
so each side waits milliseconds for the other; PostgreSQL locks rows, and the two only wait
for each other on the same message. A message whose transaction still fails is retried, then
the replay stops with what it did so far (re-running it is safe). The running service notices
a replay by the meta key `replayed_at` (set at the end), reloads its patients and sends the
queued pages.

**Validation.** After the import the file is read again and every message's digest looked up in
the journal: "all N messages present", or the missing ones listed and exit 1. `--validate-only`
runs just this step.

**Provenance.** With `--environment` / `AKI_ENVIRONMENT`, a state recorded for another
environment is refused: replaying one hospital's messages into another's state is the incident
again.

Exit codes: 0 done, 1 messages missing after validation or the replay failed, 2 refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import hl7
from .statecmd import Refused, add_state_location, exit_code, feed_profile, one_line, open_state
from .timeutil import format_hl7_time, parse_hl7_time

START, END = b"\x0b", b"\x1c\x0d"
_SEGMENT = re.compile(rb"^[A-Z][A-Z0-9]{2}(\||$)")
STORE_RETRIES = 3


@dataclass(frozen=True, slots=True)
class Item:
    raw: bytes
    where: str         # "line 12" or "frame 3": for the report


def digest(raw: bytes) -> bytes:
    """The journal's key, as Ingest computes it."""
    from .ingest import message_digest

    return message_digest(raw)


# --- reading the file ---------------------------------------------------------------------------

def read_items(path: str | Path) -> list[Item]:
    """The messages of an MLLP or text file, in file order (see the module docstring)."""
    data = Path(path).read_bytes()
    if data.lstrip(b" \t\r\n")[:1] == START:    # not .lstrip(): 0x0B is whitespace to it
        return _read_mllp(Path(path), data)
    return _read_text(data)


def _read_mllp(path: Path, data: bytes) -> list[Item]:
    from .hospital.datafiles import read_messages

    try:
        return [Item(m, f"frame {i}") for i, m in enumerate(read_messages(path), 1)]
    except ValueError:
        pass
    # Liberal: bytes between frames are skipped, as the live MLLP decoder does.
    out = []
    for chunk in data.split(END):
        i = chunk.find(START)
        if i >= 0:
            out.append(Item(chunk[i + 1:], f"frame {len(out) + 1}"))
    return out


def _read_text(data: bytes) -> list[Item]:
    items: list[Item] = []
    segs: list[bytes] = []
    where = ""

    def flush() -> None:
        nonlocal segs
        if segs:
            items.append(Item(b"\r".join(segs) + b"\r", where))
        segs = []

    for n, line in enumerate(data.split(b"\n"), 1):
        line = line.rstrip(b"\r")
        if b"\r" not in line and b"\\r" in line:
            line = line.replace(b"\\r", b"\r")
        parts = [s for s in line.split(b"\r") if s.strip()]
        if not parts:
            flush()            # a blank line ends a message
            continue
        if parts[0].startswith(b"MSH"):
            flush()
            where = f"line {n}"
            segs = parts
        elif segs and _SEGMENT.match(parts[0]):
            segs.extend(parts)
        else:                  # junk: a message of its own, which Ingest will reject
            flush()
            where = f"line {n}"
            segs = parts
    flush()
    return items


def _msh_time(raw: bytes) -> int | None:
    head = raw.split(b"\r", 1)[0]
    if not head.startswith(b"MSH"):
        return None
    fields = head.split(b"|")
    try:
        return parse_hl7_time(fields[6].split(b"^")[0].decode().strip())
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


def in_time_order(items: list[Item]) -> list[Item]:
    """Stable sort by MSH-7; a message without one keeps the time of the message before it."""
    keys = []
    last = -(2 ** 62)
    for it in items:
        t = _msh_time(it.raw)
        last = t if t is not None else last
        keys.append(last)
    order = sorted(range(len(items)), key=lambda i: keys[i])
    return [items[i] for i in order]


# --- the report ---------------------------------------------------------------------------------

@dataclass
class Decision:
    page: str          # MRN,YYYYMMDDHHMMSS
    status: str        # suppressed | pending
    stage: int | None
    score: float | None
    ratio: float | None
    hours_before_now: float


@dataclass
class Report:
    file: str
    state: str
    messages: int = 0
    added: dict[str, int] = field(default_factory=dict)      # by kind
    skipped: int = 0                                          # same bytes already journaled
    duplicate_results: int = 0                                # result known under other bytes
    ignored: int = 0                                          # other message types
    rejected: list[dict] = field(default_factory=list)        # {where, reason}
    decisions: list[Decision] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    validated: bool = False

    def text(self) -> str:
        added = sum(self.added.values())
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.added.items()))
        out = [f"replay of {self.file} into {self.state}",
               f"messages in file  {self.messages}",
               f"added             {added}" + (f" ({kinds})" if kinds else ""),
               f"skipped           {self.skipped} (already in the state)"]
        if self.duplicate_results:
            out.append(f"duplicate results {self.duplicate_results} (a result for that patient and "
                       "sample time was already known, e.g. from the live feed)")
        if self.ignored:
            out.append(f"ignored           {self.ignored} (message types the service does not use)")
        out.append(f"rejected          {len(self.rejected)} (dead letters)")
        out += [f"  {r['where']}: {r['reason']}" for r in self.rejected]
        sup = [d for d in self.decisions if d.status == "suppressed"]
        pend = [d for d in self.decisions if d.status != "suppressed"]
        out.append(f"AKI decisions     {len(self.decisions)}: {len(pend)} queued for paging, "
                   f"{len(sup)} not paged (too old)")
        for d in self.decisions:
            detail = f"stage {d.stage}" + (f", ratio {d.ratio:.2f}" if d.ratio else "")
            if d.score is not None and d.score != d.stage:     # the model's probability
                detail += f", score {d.score:.3f}"
            age = (f"sampled {d.hours_before_now:.1f} h before now" if d.hours_before_now >= 0
                   else "sampled after now")
            note = ("NOT PAGED: review clinically" if d.status == "suppressed"
                    else "queued: the service sends it at its next start")
            out.append(f"  {d.status:<10} {d.page}  {detail}, {age}  ({note})")
        if pend:
            out.append("restart the service so it sends the queued pages and reloads patients")
        return "\n".join(out)

    def json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# --- replay and validation ----------------------------------------------------------------------

def open_for_replay(args: argparse.Namespace, environment: str | None):
    """The existing state (--state-dir or --state-url), migrated as the service would; Refused
    when it is recorded for another environment."""
    store = open_state(args, readonly=False)
    try:
        store.migrate()
        recorded = store.meta().get("environment")
    except BaseException:
        store.close()
        raise
    if environment and recorded and recorded != environment:
        store.close()
        raise Refused(f"state {store.location} belongs to environment {recorded!r}, not "
                      f"{environment!r}: replaying one hospital's messages into another's state "
                      "is the stale-state incident again. Point --state-dir / --state-url at "
                      "this environment's state")
    return store


def replay(store, detector, items: list[Item], now: int, cutoff_hours: float | None,
           report: Report, profile: hl7.FeedProfile = hl7.DEFAULT_PROFILE) -> Report:
    """Feed `items` through Ingest in time order. `now` and the cutoff are on the hospital's
    time axis (timeutil seconds); `cutoff_hours=None` queues every page (--page-missed)."""
    from .ingest import Ingest
    from .timeutil import HOUR

    page_from = None if cutoff_hours is None else now - int(cutoff_hours * HOUR)
    ingest = Ingest(store, detector, page_from=page_from, profile=profile)
    report.messages = len(items)
    for it in in_time_order(items):
        d = digest(it.raw)
        before = store.query("SELECT 1 FROM journal WHERE digest = ?", d).fetchone()
        for attempt in range(1, STORE_RETRIES + 1):
            try:
                ingest.apply(it.raw, time.perf_counter())
                break
            except Exception as e:  # noqa: BLE001 - the storage's: Ingest retries the rest itself
                if attempt >= STORE_RETRIES:
                    raise RuntimeError(f"{it.where}: cannot be stored ({e}); stopped after "
                                       f"{report_progress(report)}. Re-running is safe") from e
                time.sleep(0.2 * attempt)
        if before is not None:
            report.skipped += 1
            continue
        row = store.query("SELECT id, kind, status, reason FROM journal WHERE digest = ?",
                          d).fetchone()
        if row is None:         # cannot happen: apply() returned, so it was journaled
            continue
        jid, kind, status, reason = row
        if status == "dead":
            report.rejected.append({"where": it.where, "reason": reason or ""})
        elif status == "duplicate-result":
            report.duplicate_results += 1
        elif status == "ignored":
            report.ignored += 1
        else:
            report.added[kind] = report.added.get(kind, 0) + 1
        for body, result_time, pstatus, expl in store.query(
                "SELECT body, result_time, status, explanation FROM outbox WHERE journal_id = ? "
                "ORDER BY id", jid).fetchall():
            e = json.loads(expl)
            report.decisions.append(Decision(body, pstatus, e.get("stage"), e.get("score"),
                                             e.get("ratio"),
                                             round((now - result_time) / HOUR, 1)))
    return report


def report_progress(r: Report) -> str:
    return (f"{sum(r.added.values())} added, {r.skipped} skipped, "
            f"{len(r.rejected)} rejected")


def validate(store, items: list[Item],
             profile: hl7.FeedProfile = hl7.DEFAULT_PROFILE) -> list[str]:
    """Where-descriptions of the items whose digest is not in the store's journal."""
    return [f"{it.where}: {describe(it.raw, profile)}" for it in items
            if store.query("SELECT 1 FROM journal WHERE digest = ?",
                           digest(it.raw)).fetchone() is None]


def describe(raw: bytes, profile: hl7.FeedProfile = hl7.DEFAULT_PROFILE) -> str:
    """One line naming a message for an operator: type, MRN and time, or its first bytes.
    Read with the feed's `profile`, as the service reads it (its MRNs, its creatinine codes)."""
    try:
        e = hl7.parse(raw, profile)
    except hl7.HL7Error:
        e = None
    sent = _msh_time(raw)
    sent_text = "" if sent is None else f" sent {format_hl7_time(sent)}"
    if isinstance(e, hl7.Result):
        sampled = ", ".join(o.time_text for o in e.observations)
        return f"ORU^R01 result MRN {e.mrn} sampled {sampled}{sent_text}"
    if isinstance(e, hl7.Merge):
        return f"ADT merge of MRN {e.old} into {e.mrn}{sent_text}"
    if isinstance(e, (hl7.Admission, hl7.Update, hl7.Discharge)):
        kind = {hl7.Admission: "ADT^A01 admission", hl7.Update: "ADT^A08 update",
                hl7.Discharge: "ADT^A03 discharge"}[type(e)]
        return f"{kind} MRN {e.mrn}{sent_text}"
    return raw[:60].replace(b"\r", b" ").decode("utf-8", "replace")


def hospital_now() -> int:
    """Now on the hospital's time axis: its wall clock (local time), as in its messages."""
    return parse_hl7_time(time.strftime("%Y%m%d%H%M%S", time.localtime()))


def _detector(args: argparse.Namespace, store):
    """The detector the service judges this state's results with: the named one, or the model
    its population check chose (population.py), so a replay judges as the service does."""
    if args.detector == "nhs":
        from .detect.nhs import NhsDetector
        return NhsDetector()
    from .config import ROBUST, shift_model
    from .detect.model import ModelLoadError, load_model
    from .startup import StartupError, serving, shipped_model
    try:
        default = load_model(args.model_path or None)
        if args.model_path:
            return default
        robust = shipped_model(shift_model(os.environ.get("MODEL_ON_SHIFT", ROBUST)))
    except ModelLoadError as e:
        raise Refused(f"cannot load the model: {e}") from None
    except StartupError as e:
        raise Refused(str(e)) from None
    return serving(store, default, robust).detector


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except Exception as e:
        code = 1 if isinstance(e, RuntimeError) else exit_code(e)
        if code is None:
            raise
        print(f"aki-alert replay: {one_line(e)}", file=sys.stderr)
        return code


def _run(args: argparse.Namespace) -> int:
    if args.detector not in ("model", "nhs"):
        raise Refused(f"DETECTOR={args.detector!r} is not one of model, nhs")
    try:
        items = read_items(args.file)
    except OSError as e:
        raise Refused(f"cannot read {args.file}: {e.strerror or e}") from None
    # Ingest logs every dead letter and page decision; the report lists them.
    ingest_log = logging.getLogger("aki_alert.ingest")
    level = ingest_log.level
    if args.verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    else:
        ingest_log.setLevel(logging.ERROR)
    try:
        return _replay_and_report(args, items)
    finally:
        ingest_log.setLevel(level)


def _replay_and_report(args: argparse.Namespace, items: list[Item]) -> int:
    store = open_for_replay(args, args.environment or os.environ.get("AKI_ENVIRONMENT"))
    try:
        report = Report(args.file, store.location, messages=len(items))
        profile = feed_profile(args)
        if not args.validate_only:
            if "history_sha256" not in store.meta():
                print("warning: no history has been imported into this state: results are "
                      "judged without the patients' past. Start the service on it first.",
                      file=sys.stderr)
            now = parse_hl7_time(args.now) if args.now else hospital_now()
            detector = _detector(args, store)
            replay(store, detector, items, now, None if args.page_missed else args.cutoff_hours,
                   report, profile)
            # A running service sees this, drops its in-memory patients and sends queued pages.
            with store.transaction():
                store.set_meta(replayed_at=str(time.time()))
        report.missing = validate(store, items, profile)
        report.validated = True
    finally:
        store.close()
    if args.json:
        print(report.json())
    else:
        if not args.validate_only:
            print(report.text())
        if report.missing:
            print(f"validation: {len(report.missing)} of {len(items)} messages MISSING from the "
                  "journal:")
            for m in report.missing:
                print(f"  {m}")
        else:
            print(f"validation: all {len(items)} messages present")
    return 1 if report.missing else 0


def register(sub) -> None:
    p = sub.add_parser(
        "replay", help="import retrieved HL7 messages into the state (idempotent)",
        description="Feed a file of HL7 messages (.mllp, or text: one message per line or "
                    "blank-line separated blocks) through the service's own ingest path, in "
                    "MSH-7 order, then check every message is in the journal. Never pages: "
                    "pages go to the outbox for the service. See docs/runbook-state.md.")
    p.add_argument("file", help="messages file")
    add_state_location(p)
    p.add_argument("--detector", default=os.environ.get("DETECTOR", "model"),
                   help="model or nhs (default model); env DETECTOR")
    p.add_argument("--model-path", default=os.environ.get("MODEL_PATH", ""),
                   help="model artifact directory (default: the shipped model); env MODEL_PATH")
    p.add_argument("--environment", default=None,
                   help="refuse a state recorded for another environment; env AKI_ENVIRONMENT")
    p.add_argument("--feed-profile", default=os.environ.get("FEED_PROFILE", ""),
                   help="the feed profile the service runs with (default: the contract's); "
                        "env FEED_PROFILE")
    p.add_argument("--cutoff-hours", type=float, default=24.0,
                   help="results sampled longer ago than this are not paged, only reported "
                        "(default 24)")
    p.add_argument("--page-missed", action="store_true",
                   help="queue pages for old results too (the service sends them at its start)")
    p.add_argument("--now", metavar="YYYYMMDDHHMMSS",
                   help="the hospital time the cutoff counts back from (default: the clock)")
    p.add_argument("--validate-only", action="store_true",
                   help="only check that every message of the file is in the journal")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--verbose", action="store_true", help="also log each page decision")
    p.set_defaults(func=run)
