"""`aki-alert demo`: the path a hospital takes, end to end, on one machine.

Generate a hospital (a few weeks of traffic and its labelled cohort) in a temp dir; train the
model on the cohort with `aki-alert train` (falling back to the shipped model, or the NHS
detector, when training is unavailable); start the simulator and `aki-alert serve` against it;
replay the stream; report the service's score beside the NHS reference. Exit 1 if it is worse.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .process import terminate
from .datafiles import read_aki, write_hospital
from .generator import generate
from .simulator import Hospital

SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "models" / "DEFAULT"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _aki_alert(*args: str) -> list[str]:
    return [sys.executable, "-m", "aki_alert", *args]


def train_model(cohort: Path, out: Path) -> tuple[str, Path | None]:
    """(detector, model path) after trying `aki-alert train`; falls back when it is missing or
    fails: the shipped model if there is one (path None), else the NHS detector."""
    t0 = time.monotonic()
    try:
        run = subprocess.run(_aki_alert("train", "--data", str(cohort), "--out", str(out)),
                             capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        why = "took longer than 90 s"
    else:
        if run.returncode == 0:
            _say(f"trained a model on the cohort in {time.monotonic() - t0:.1f} s: {out}")
            return "model", out
        last = run.stderr.strip().splitlines()[-1:]
        if "invalid choice" in run.stderr:
            why = "`aki-alert train` does not exist"
        elif run.returncode == 2 and last and "training extra" in last[0]:
            why = last[0]                   # a serving-only install: pip install '.[train]'
        else:
            why = f"`aki-alert train` failed: {last}"
    if SHIPPED_MODEL.exists():
        _say(f"{why}; using the shipped model")
        return "model", None
    _say(f"{why}; using the NHS detector")
    return "nhs", None


def _progress(done: int, total: int, started: float) -> None:
    width = 40
    filled = width * done // max(1, total)
    rate = done / max(1e-9, time.monotonic() - started)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} messages"
                     f"  {rate:,.0f}/s ")
    sys.stderr.flush()


async def _replay(hospital: Hospital, service: subprocess.Popen, log: Path) -> bool:
    """Drive the stream to its end while the service runs; then let the last pages land."""
    started = time.monotonic()
    total = len(hospital.frames)
    while not hospital.done:
        if service.poll() is not None:
            sys.stderr.write("\n")
            _say(f"the service exited with code {service.returncode}; its log ({log}) ends:\n"
                 + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
            return False
        if time.monotonic() - started > 100:
            sys.stderr.write("\n")
            _say("the stream did not finish within 100 s")
            return False
        _progress(hospital.next, total, started)
        await hospital.wait_done(0.2)
    _progress(total, total, started)
    sys.stderr.write("\n")
    quiet_since, pages = time.monotonic(), hospital.scorer.pages
    deadline = time.monotonic() + 10
    while time.monotonic() - quiet_since < 1.0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if hospital.scorer.pages != pages:
            quiet_since, pages = time.monotonic(), hospital.scorer.pages
    return True


def run_demo(args) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="aki-demo-"))
    try:
        return _demo(args, tmp)
    finally:
        if args.keep:
            _say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _demo(args, tmp: Path) -> int:
    t0 = time.monotonic()
    h = generate(args.days, args.patients, args.seed)
    paths = write_hospital(tmp / "hospital", h, junk=True, seed=args.seed)
    _say(f"generated {args.days} days of a {args.patients}-patient hospital: "
         f"{len(h.messages)} messages, {sum(r[2] for r in h.aki_rows)} AKIs, "
         f"a cohort of {len(h.cohort)} rows ({tmp / 'hospital'})")

    detector, model = args.detector, args.model
    if detector == "model" and model is None:
        detector, model = train_model(paths["training"], tmp / "model")

    hospital = Hospital(h.messages, read_aki(paths["aki"]), pages_out=tmp / "pages.txt")
    metrics_port = _free_port()
    state = args.state or tmp / "state"
    log = tmp / "service.log"

    async def run() -> bool:
        mllp, pager = await hospital.start()
        env = dict(os.environ, MLLP_ADDRESS=f"127.0.0.1:{mllp}",
                   PAGER_ADDRESS=f"127.0.0.1:{pager}", HISTORY_PATH=str(paths["history"]),
                   STATE_DIR=str(state), METRICS_PORT=str(metrics_port), DETECTOR=detector)
        if model is not None:
            env["MODEL_PATH"] = str(model)
        _say(f"starting `aki-alert serve --detector {detector}`"
             f"{f' with MODEL_PATH={model}' if model else ''} (log: {log})")
        with open(log, "wb") as out:
            service = subprocess.Popen(_aki_alert("serve", "--detector", detector), env=env,
                                       stdout=out, stderr=subprocess.STDOUT)
        try:
            return await _replay(hospital, service, log)
        finally:
            terminate(service)
            await hospital.stop()

    finished = asyncio.run(run())
    s = hospital.score()
    rate = hospital.rate()
    _say("")
    print(f"messages          {hospital.acked} acknowledged of {len(hospital.frames)}"
          f"{'' if hospital.done else ' (stream not finished)'}")
    print(f"results           {hospital.n_results}")
    print(f"pages             {s.pages}")
    print(f"TP / FP / FN      {s.tp} / {s.fp} / {s.fn}")
    print(f"F3                {s.f3:.3f}   (NHS reference {s.nhs_f3:.3f}, detector {detector})")
    lat = [f"{x * 1000:.1f} ms" if x is not None else "-"
           for x in (s.latency_p50, s.latency_p90, s.latency_p99)]
    print(f"latency           p50 {lat[0]}  p90 {lat[1]}  p99 {lat[2]}")
    print(f"throughput        {rate:,.0f} messages/s" if rate else "throughput        -")
    print(f"demo took         {time.monotonic() - t0:.1f} s")
    if not finished:
        return 1
    if s.f3 < s.nhs_f3:
        _say("the service's F3 is below the NHS reference")
        return 1
    return 0
