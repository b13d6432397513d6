"""The built-in hospital's commands: `generate`, `simulate`, `score` and `demo`."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path


def register(sub) -> None:
    """Registers `generate`, `simulate`, `score` and `demo`."""
    g = sub.add_parser("generate", help="write a synthetic hospital (stream, history, labels)",
                       description="Write messages.mllp, history.csv, aki.csv and training.csv "
                                   "(contract §3, §6) for a synthetic hospital. Deterministic "
                                   "for a given seed; docs/hospital.md describes the model.")
    g.add_argument("--days", type=int, default=365, help="days of stream (default 365)")
    g.add_argument("--patients", type=int, default=10_000,
                   help="population size (default 10000: about 85,000 messages a year)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--cohort", type=int, default=4000, help="rows of training.csv (default 4000)")
    g.add_argument("--junk", action="store_true",
                   help="add real files' junk to history.csv (empty cells, absurd values, CRLF, "
                        "duplicate rows)")
    g.add_argument("--out", type=Path, required=True, help="directory to write")
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("simulate", help="serve a stream over MLLP and score pages",
                       description="The hospital: an MLLP server (the service connects to it) "
                                   "and an HTTP pager (POST /page, GET /metrics), as the contract "
                                   "says. Prints the score when the stream is done.")
    s.add_argument("--messages", type=Path, required=True, help="messages.mllp")
    s.add_argument("--akis", type=Path, required=True, help="aki.csv")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--mllp", type=int, default=8440, help="MLLP port (0: any free port)")
    s.add_argument("--pager", type=int, default=8441, help="pager port (0: any free port)")
    s.add_argument("--resume", type=Path, metavar="STATE_FILE",
                   help="live mode: resume after the last ACKed message (kept in STATE_FILE); "
                        "default: replay from the start on every connection")
    s.add_argument("--speed", type=float,
                   help="real-time mode: send at message times, this many times faster "
                        "(1 = real time); default: as fast as acknowledged")
    s.add_argument("--deadline", type=float, default=10.0, help="ACK deadline, seconds")
    s.add_argument("--pages-out", type=Path, help="append accepted pages (MRN,TIME) to this file")
    s.add_argument("--linger", type=float, default=2.0,
                   help="seconds to keep paging open after the stream ends (default 2)")
    s.add_argument("--disconnect-every", type=int, default=0, metavar="N")
    s.add_argument("--split-writes", action="store_true")
    s.add_argument("--corrupt-every", type=int, default=0, metavar="N")
    s.add_argument("--pager-fail-rate", type=float, default=0.0, help="fraction answered 500")
    s.add_argument("--pager-hang-rate", type=float, default=0.0, help="fraction never answered")
    s.add_argument("--pager-hang-seconds", type=float, default=3600.0, metavar="S",
                   help="how long a hung page request waits before a 504 (default 3600)")
    s.add_argument("--pager-outage", metavar="START:END",
                   help="seconds after start during which the pager is down")
    s.add_argument("--pager-outage-kind", choices=("503", "hang", "refuse"), default="503",
                   help="how the pager is down in its outage: answers 503 (default), answers "
                        "nothing, or refuses connections")
    s.add_argument("--seed", type=int, default=0, help="seed of the pager's fault draws")
    s.set_defaults(func=cmd_simulate)

    c = sub.add_parser("score", help="score a pages file offline (contract §5, strict)")
    c.add_argument("--pages", type=Path, required=True, help="one MRN,YYYYMMDDHHMMSS per line")
    c.add_argument("--akis", type=Path, required=True, help="aki.csv")
    c.set_defaults(func=cmd_score)

    d = sub.add_parser("demo", help="generate a hospital, train, serve it, report the score",
                       description="The path a hospital takes, end to end, on this machine: "
                                   "generate, train (`aki-alert train`), run `aki-alert serve` "
                                   "against the simulator, and compare its F3 with the NHS "
                                   "reference. Exits 1 if the service does worse.")
    d.add_argument("--days", type=int, default=28)
    d.add_argument("--patients", type=int, default=10_000)
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--model", type=Path, help="use this model instead of training one")
    d.add_argument("--detector", choices=("model", "nhs"), default="model")
    d.add_argument("--state", type=Path, help="service state directory (default: a temp dir)")
    d.add_argument("--keep", action="store_true", help="keep the temp directory")
    d.set_defaults(func=cmd_demo)


def cmd_generate(args) -> int:
    from .datafiles import write_hospital
    from .generator import generate
    from .scoring import f3

    h = generate(args.days, args.patients, args.seed, cohort_size=args.cohort)
    paths = write_hospital(args.out, h, junk=args.junk, seed=args.seed)
    results = sum(b"|ORU^R01|" in m[:80] for m in h.messages)
    tp = sum(1 for _, _, a, n in h.aki_rows if a and n)
    fn = sum(1 for _, _, a, n in h.aki_rows if a and not n)
    fp = sum(1 for _, _, a, n in h.aki_rows if not a and n)
    print(f"{len(h.messages)} messages ({results / max(1, len(h.messages)):.0%} results), "
          f"{tp + fn} AKIs, NHS reference F3 {f3(tp, fp, fn):.3f}; "
          f"history of {len(h.history)} patients; cohort of {len(h.cohort)} rows", file=sys.stderr)
    for p in paths.values():
        print(p)
    return 0


def _outage(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    a, _, b = text.partition(":")
    return float(a), float(b)


def cmd_simulate(args) -> int:
    from .datafiles import read_aki, read_messages
    from .pager_server import PagerFaults
    from .simulator import Hospital, MllpFaults

    hospital = Hospital(
        read_messages(args.messages), read_aki(args.akis), host=args.host,
        mllp_port=args.mllp, pager_port=args.pager, deadline=args.deadline,
        resume_state=args.resume, speed=args.speed, pages_out=args.pages_out,
        mllp_faults=MllpFaults(args.disconnect_every, args.split_writes, args.corrupt_every),
        pager_faults=PagerFaults(fail_rate=args.pager_fail_rate, hang_rate=args.pager_hang_rate,
                                 hang_seconds=args.pager_hang_seconds,
                                 outage=_outage(args.pager_outage),
                                 outage_kind=args.pager_outage_kind, seed=args.seed))

    async def run() -> None:
        mllp, pager = await hospital.start()
        print(f"hospital: MLLP on {args.host}:{mllp}, pager on http://{args.host}:{pager}/page "
              f"(metrics at /metrics), {len(hospital.frames)} messages", file=sys.stderr)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        done = asyncio.ensure_future(hospital.wait_done())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([done, stopped], return_when=asyncio.FIRST_COMPLETED)
        if hospital.done and not stop.is_set():
            await asyncio.wait([stopped], timeout=args.linger)
        done.cancel()
        stopped.cancel()
        await hospital.stop()

    asyncio.run(run())
    print(summary(hospital), file=sys.stderr)
    return 0


def summary(hospital) -> str:
    s = hospital.score()
    rate = hospital.rate()
    return (f"messages {hospital.acked}/{len(hospital.frames)} acknowledged"
            f"{'' if hospital.done else ' (stream not finished)'}, results "
            f"{hospital.n_results}, pages {s.pages}, connections {hospital.connections}"
            + (f", {rate:.0f} messages/s" if rate else "") + "\n" + s.summary())


def cmd_score(args) -> int:
    from .datafiles import read_aki, read_pages
    from .scoring import Scorer

    scorer = Scorer(read_aki(args.akis))
    for mrn, t in read_pages(args.pages):
        scorer.page(mrn, t, None)
    print(scorer.score().summary())
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args)
