"""The hospital's pager: `POST /page` (contract §4) with injectable failures, and `/metrics`.

200 `ok\\n` for a page it accepts; 400 for a bad MRN, a timestamp that is not 12 or 14 digits, or
more than two comma-separated parts. Faults, drawn from a seeded RNG: a fraction of 500s, a
fraction that hang (no answer until `hang_seconds` pass or the server stops), and an outage
window (seconds after start) answering 503. Only accepted pages reach `on_page`.
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
    outage: tuple[float, float] | None = None     # [start, end) seconds after start: 503
    seed: int = 0


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
        self.responses: Counter[int] = Counter()   # HTTP status -> count (0: hung)
        self._rng = random.Random(faults.seed)
        self._started = time.monotonic()
        app = web.Application()
        app.router.add_post("/page", self._page)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port = 0
        self._stopping = asyncio.Event()   # ends hung requests

    async def start(self, host: str, port: int) -> int:
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = self._runner.addresses[0][1]
        self._started = time.monotonic()
        return self.port

    async def stop(self) -> None:
        self._stopping.set()
        await self._runner.cleanup()

    async def _page(self, request: web.Request) -> web.Response:
        body = await request.read()
        f = self.faults
        elapsed = time.monotonic() - self._started
        if f.outage and f.outage[0] <= elapsed < f.outage[1]:
            return self._answer(503, "outage\n")
        roll = self._rng.random()
        if roll < f.hang_rate:
            self.responses[0] += 1
            try:
                await asyncio.wait_for(self._stopping.wait(), f.hang_seconds)
            except asyncio.TimeoutError:
                pass
            return web.Response(status=504, text="hung\n")
        if roll < f.hang_rate + f.fail_rate:
            return self._answer(500, "injected failure\n")
        try:
            mrn, t = parse_page(body)
        except (ValueError, UnicodeDecodeError) as e:
            return self._answer(400, f"bad page: {e}\n")
        self.on_page(mrn, t, time.perf_counter())
        return self._answer(200, "ok\n")

    def _answer(self, status: int, text: str) -> web.Response:
        self.responses[status] += 1
        return web.Response(status=status, text=text)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics_text(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
