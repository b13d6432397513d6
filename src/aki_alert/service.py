"""The wiring of `aki-alert serve`: receive → apply in one transaction → ACK → page.

Start-up opens the state, imports the history file if this state has not seen it, loads the
detector, resends any page still in the outbox, then connects to the hospital. SIGTERM stops
reading at once, finishes the message in hand, gives in-flight pages a moment, and exits 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import time

from . import health, metrics
from .config import Config
from .connection import MllpClient
from .detect import Detector
from .detect.nhs import NhsDetector
from .hl7 import ack
from .history import ImportSummary, fingerprint, read_history
from .ingest import Ingest
from .mllp import FrameError
from .pager import Dispatcher
from .store.sqlite import SqliteStore

log = logging.getLogger(__name__)

DRAIN_SECONDS = 3.0


class StartupError(Exception):
    """The service cannot start; the message says what to do."""


def load_detector(cfg: Config) -> Detector:
    if cfg.detector == "nhs":
        return NhsDetector()
    from .detect.model import ModelLoadError, load_model

    try:
        return load_model(cfg.model_path)
    except ModelLoadError as e:
        raise StartupError(f"cannot load the model: {e}") from e


def import_history(store: SqliteStore, path: str) -> bool:
    """Import the history file unless this state already holds this exact file.

    Returns whether the state holds the configured history. A missing or unusable file is
    logged and the service goes on without it (a result is still judged on what is known).
    """
    try:
        digest = fingerprint(path)
    except OSError as e:
        metrics.HISTORY_LOADED.set(0)
        log.error("history file %s cannot be read (%s): starting without history; results of "
                  "patients seen before today will be judged without their past", path,
                  e.strerror or e)
        return False
    meta = store.meta()
    if meta.get("history_sha256") == digest:
        metrics.HISTORY_LOADED.set(1)
        log.info("history %s already imported (sha256 %s)", path, digest[:12])
        return True
    if meta.get("history_sha256"):
        log.warning("history file %s differs from the one this state was built from "
                    "(sha256 %s, now %s): merging its new rows", path,
                    meta["history_sha256"][:12], digest[:12])
    summary = ImportSummary()
    started = time.perf_counter()
    try:
        added = store.import_results(read_history(path, summary))
    except (ValueError, UnicodeError) as e:
        metrics.HISTORY_LOADED.set(0)
        log.error("history file %s is not usable (%s): starting without history", path, e)
        return False
    duplicates = summary.results - added
    if duplicates:
        summary.skipped["duplicate results"] += duplicates
    with store.transaction():
        store.set_meta(history_sha256=digest, history_path=path,
                       history_imported_at=str(int(time.time())))
    metrics.HISTORY_ROWS.inc(added)
    for reason, n in summary.skipped.items():
        metrics.HISTORY_SKIPPED.labels(reason=reason).inc(n)
    metrics.HISTORY_LOADED.set(1)
    log.info("history %s imported in %.2fs: %s", path, time.perf_counter() - started,
             summary.describe())
    return True


def open_state(cfg: Config) -> SqliteStore:
    try:
        os.makedirs(cfg.state_dir, exist_ok=True)
    except OSError as e:
        raise StartupError(f"STATE_DIR {cfg.state_dir} cannot be created: {e.strerror}") from e
    store = SqliteStore(os.path.join(cfg.state_dir, "state.db"), cfg.durability)
    meta = store.meta()
    if meta.get("environment") is None:
        with store.transaction():
            store.set_meta(environment=cfg.environment, created_at=str(int(time.time())))
    elif meta["environment"] != cfg.environment:
        log.warning("state %s was built for environment %r, now serving %r", cfg.state_dir,
                    meta["environment"], cfg.environment)
    return store


class Service:
    def __init__(self, cfg: Config, store: SqliteStore, detector: Detector) -> None:
        self.cfg = cfg
        self.store = store
        self.ingest = Ingest(store, detector)
        self.dispatcher = Dispatcher(store, cfg.pager_address)
        self.client = MllpClient(cfg.mllp_host, cfg.mllp_port, self.on_frame)

    def on_frame(self, item: bytes | FrameError, received: float) -> bytes:
        if isinstance(item, FrameError):
            metrics.FRAME_ERRORS.inc()
            digest = hashlib.blake2b(item.reason.encode() + item.prefix, digest_size=16).digest()
            self.ingest.set_aside(digest, "oversized-frame", item.reason, item.prefix)
            reply = ack("AA")
        else:
            reply, page = self.ingest.handle(item, received)
            if page is not None:
                self.dispatcher.submit(page.id, page.body, page.received)
        metrics.ACKS.labels(code="AA").inc()
        metrics.PROCESSING.observe(time.perf_counter() - received)
        return reply

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        await self.dispatcher.start()
        await self.client.run()
        log.info("stopped reading; waiting up to %.0fs for %d page(s) in flight",
                 DRAIN_SECONDS, self.dispatcher.in_flight)
        await self.dispatcher.drain(DRAIN_SECONDS)
        self.store.close()
        log.info("shut down cleanly")

    def stop(self) -> None:
        log.info("stop requested")
        self.client.stop()


def serve(cfg: Config) -> None:
    readiness = health.Readiness()
    if cfg.metrics_port:
        try:
            health.start(cfg.metrics_port, readiness)
        except OSError as e:
            raise StartupError(f"METRICS_PORT {cfg.metrics_port} cannot be opened: "
                               f"{e.strerror or e}") from e
    store = open_state(cfg)
    readiness.set("state", True)
    readiness.set("history", import_history(store, cfg.history_path),
                  f"{cfg.history_path} not imported")
    detector = load_detector(cfg)
    readiness.set("detector", True)
    metrics.MODEL.info({"detector": detector.name, "version": detector.version})
    metrics.PROVENANCE.info({k: v for k, v in store.meta().items()
                             if k in ("environment", "history_sha256")})
    log.info("serving: hospital %s, pager %s, state %s, detector %s %s", cfg.mllp_address,
             cfg.pager_address, cfg.state_dir, detector.name, detector.version)
    asyncio.run(Service(cfg, store, detector).run())
