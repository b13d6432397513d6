"""The hospital's pager: `POST /page` (contract §4) with injectable failures, and `/metrics`.

200 `ok\\n` for a page it accepts; 400 for a bad MRN, a timestamp that is not 12 or 14 digits, or
more than two comma-separated parts. Faults, drawn from a seeded RNG: a fraction of 500s, a
fraction that hang (no answer until `hang_seconds` pass or the server stops, then 504), and an
outage window (seconds after start) during which the pager is down in one of three ways
(`outage_kind`): "503" answers 503 to every page, "hang" answers nothing (as a hung request),
"refuse" stops listening (connections refused) and drops the kept-alive ones unanswered. Only
accepted pages reach `on_page`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from aiohttp import web

from ..timeutil import parse_hl7_time


@dataclass(frozen=True, slots=True)
class PagerFaults:
    fail_rate: float = 0.0                        # fraction answered 500
    hang_rate: float = 0.0                        # fraction never answered (hang)
    hang_seconds: float = 3600.0
    outage: tuple[float, float] | None = None     # [start, end) seconds after start: down
    outage_kind: str = "503"                      # "503", "hang" or "refuse" (module doc)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.outage_kind not in OUTAGE_KINDS:
            raise ValueError(f"outage_kind must be one of {OUTAGE_KINDS}, not "
                             f"{self.outage_kind!r}")


OUTAGE_KINDS = ("503", "hang", "refuse")


def parse_page(body: bytes) -> tuple[str, int | None]:
    """(MRN, time or None) of a page body; ValueError for what the hospital answers 400 to."""
    text = body.decode("ascii")
    parts = text.split(",")
    if len(parts) > 2:
        raise ValueError("more than two comma-separated parts")
    mrn = parts[0]
    if not mrn.isdigit() or not mrn.isascii():
        raise ValueError("bad MRN")
    if len(parts) == 1:
        return mrn, None
    return mrn, parse_hl7_time(parts[1])


class PagerServer:
    def __init__(self, on_page: Callable[[str, int | None, float], None],
                 metrics_text: Callable[[], bytes], faults: PagerFaults = PagerFaults()) -> None:
        self.on_page = on_page
        self.metrics_text = metrics_text
        self.faults = faults
        # HTTP status -> count (0: hung, -1: dropped unanswered during a "refuse" outage)
        self.responses: Counter[int] = Counter()
        self._rng = random.Random(faults.seed)
        self._started = time.monotonic()
        app = web.Application()
        app.router.add_post("/page", self._page)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port = 0
        self._stopping = asyncio.Event()   # ends hung requests
        self._site: web.TCPSite | None = None
        self._host = ""
        self._outage_task: asyncio.Task | None = None

    async def start(self, host: str, port: int) -> int:
        await self._runner.setup()
        self._host = host
        self._site = web.TCPSite(self._runner, host, port)
        await self._site.start()
        self.port = self._runner.addresses[0][1]
        self._started = time.monotonic()
        if self.faults.outage and self.faults.outage_kind == "refuse":
            self._outage_task = asyncio.get_running_loop().create_task(self._refuse())
        return self.port

    async def _refuse(self) -> None:
        """A "refuse" outage: stop listening for its window, then listen again (same port)."""
        start, end = self.faults.outage
        await asyncio.sleep(max(0.0, start - (time.monotonic() - self._started)))
        await self._site.stop()
        await asyncio.sleep(max(0.0, end - (time.monotonic() - self._started)))
        self._site = web.TCPSite(self._runner, self._host, self.port)
        await self._site.start()

    def down(self) -> bool:
        """True during the outage window."""
        f = self.faults
        elapsed = time.monotonic() - self._started
        return f.outage is not None and f.outage[0] <= elapsed < f.outage[1]

    async def stop(self) -> None:
        self._stopping.set()
        if self._outage_task is not None:
            self._outage_task.cancel()
            await asyncio.gather(self._outage_task, return_exceptions=True)
        await self._runner.cleanup()

    async def _page(self, request: web.Request) -> web.Response:
        body = await request.read()
        f = self.faults
        if self.down():
            if f.outage_kind == "503":
                return self._answer(503, "outage\n")
            if f.outage_kind == "hang":
                return await self._hang()
            self.responses[-1] += 1
            request.transport.close()             # "refuse": a kept-alive connection
            return web.Response(status=503, text="outage\n")
        roll = self._rng.random()
        if roll < f.hang_rate:
            return await self._hang()
        if roll < f.hang_rate + f.fail_rate:
            return self._answer(500, "injected failure\n")
        try:
            mrn, t = parse_page(body)
        except (ValueError, UnicodeDecodeError) as e:
            return self._answer(400, f"bad page: {e}\n")
        self.on_page(mrn, t, time.perf_counter())
        return self._answer(200, "ok\n")

    async def _hang(self) -> web.Response:
        """No answer for `hang_seconds` (or until the server stops), then 504."""
        self.responses[0] += 1
        try:
            await asyncio.wait_for(self._stopping.wait(), self.faults.hang_seconds)
        except asyncio.TimeoutError:
            pass
        return web.Response(status=504, text="hung\n")

    def _answer(self, status: int, text: str) -> web.Response:
        self.responses[status] += 1
        return web.Response(status=status, text=text)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics_text(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
