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
from .provenance import Overlap, decide
from .quality import LabelsMonitor
from .store.sqlite import SqliteStore

log = logging.getLogger(__name__)

DRAIN_SECONDS = 3.0
QUALITY_INTERVAL = 60.0
HOUSEKEEPING_INTERVAL = 5.0


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


def _import(store: SqliteStore, path: str, digest: str) -> None:
    summary = ImportSummary()
    started = time.perf_counter()
    added = store.import_results(read_history(path, summary))
    if summary.results > added:
        summary.skipped["duplicate results"] += summary.results - added
        summary.results = added
    with store.transaction():
        store.set_meta(history_sha256=digest, history_path=path,
                       history_imported_at=str(int(time.time())))
    metrics.HISTORY_ROWS.inc(added)
    for reason, n in summary.skipped.items():
        metrics.HISTORY_SKIPPED.labels(reason=reason).inc(n)
    log.info("history %s imported in %.2fs: %s", path, time.perf_counter() - started,
             summary.describe())


def reconcile(store: SqliteStore, cfg: Config) -> bool:
    """Make the state this environment's, importing its history; True when the state holds the
    configured history. See provenance.py for the policy."""
    path = cfg.history_path
    try:
        digest = fingerprint(path)
    except OSError as e:
        digest = None
        log.error("history file %s cannot be read (%s): starting without it; results of "
                  "patients seen before today will be judged without their past", path,
                  e.strerror or e)
    meta = store.meta()
    recorded, recorded_env = meta.get("history_sha256"), meta.get("environment")
    overlap = None
    if digest is not None and recorded != digest and (recorded or recorded_env != cfg.environment):
        try:
            overlap = Overlap(*store.history_overlap(read_history(path, ImportSummary())))
        except (ValueError, UnicodeError):
            overlap = None
    d = decide(cfg.on_history_change, recorded, digest, recorded_env, cfg.environment, overlap)
    metrics.PROVENANCE_MISMATCH.set(1 if d.mismatch else 0)
    if d.mismatch:
        metrics.PROVENANCE_MISMATCHES.labels(action=d.action).inc()
        log.error("state provenance mismatch in %s: %s", cfg.state_dir, d.reason)
    elif d.action == "merge":
        log.warning("%s", d.reason)
    if d.action == "refuse":
        raise StartupError(
            f"state in {cfg.state_dir} does not match this environment: {d.reason}. To resolve, "
            "restart with --on-history-change merge (same hospital: import the new history, keep "
            "live results) or --on-history-change rebuild (another hospital: archive this state "
            "and start from the new history); or point STATE_DIR at this environment's state")
    if d.action == "rebuild":
        archived = store.archive(time.strftime("archived-%Y%m%dT%H%M%SZ", time.gmtime()))
        log.error("previous state archived as %s; rebuilding from %s", archived, path)
    if recorded_env != cfg.environment or d.action == "rebuild":
        with store.transaction():
            store.set_meta(environment=cfg.environment)
    if digest is None:
        return False
    if d.action in ("import", "merge", "rebuild"):
        try:
            _import(store, path, digest)
        except (ValueError, UnicodeError) as e:
            log.error("history file %s is not usable (%s): starting without it", path, e)
            return False
    else:
        log.info("history %s already imported (sha256 %s)", path, digest[:12])
    return True


def open_state(cfg: Config) -> SqliteStore:
    try:
        os.makedirs(cfg.state_dir, exist_ok=True)
    except OSError as e:
        raise StartupError(f"STATE_DIR {cfg.state_dir} cannot be created: {e.strerror}") from e
    store = SqliteStore(os.path.join(cfg.state_dir, "state.db"), cfg.durability)
    if "created_at" not in store.meta():
        with store.transaction():
            store.set_meta(created_at=str(int(time.time())))
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
        background = [asyncio.create_task(self._housekeeping())]
        if self.cfg.labels_path:
            monitor = LabelsMonitor(self.cfg.labels_path, self.store.db)
            background.append(asyncio.create_task(self._score_quality(monitor)))
        await self.client.run()
        for task in background:
            task.cancel()
        log.info("stopped reading; waiting up to %.0fs for %d page(s) in flight",
                 DRAIN_SECONDS, self.dispatcher.in_flight)
        await self.dispatcher.drain(DRAIN_SECONDS)
        self.store.close()
        log.info("shut down cleanly")

    async def _housekeeping(self) -> None:
        """Pick up what other processes changed in the state: pages queued and patients
        updated by `aki-alert replay`."""
        replayed = self.store.meta().get("replayed_at")
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                now = self.store.meta().get("replayed_at")
                if now != replayed:
                    replayed = now
                    self.ingest.forget()
                    log.info("state changed by a replay: patients reloaded from the state")
                self.dispatcher.resubmit_pending()
            except Exception as e:  # noqa: BLE001 - next round tries again
                log.error("housekeeping failed: %s", e)

    async def _score_quality(self, monitor: LabelsMonitor) -> None:
        while True:
            q = monitor.refresh()
            if q is not None:
                metrics.ROLLING_F3.set(q.f3)
                for outcome in ("tp", "fp", "fn"):
                    metrics.ROLLING_COUNTS.labels(outcome=outcome).set(getattr(q, outcome))
            await asyncio.sleep(QUALITY_INTERVAL)

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
    history_ok = reconcile(store, cfg)
    metrics.HISTORY_LOADED.set(1 if history_ok else 0)
    readiness.set("history", history_ok, f"{cfg.history_path} not imported")
    detector = load_detector(cfg)
    readiness.set("detector", True)
    metrics.MODEL.info({"detector": detector.name, "version": detector.version})
    metrics.ROLLING_F3.set(float("nan"))
    with store.transaction():
        store.set_meta(detector=detector.name, detector_version=detector.version)
    metrics.PROVENANCE.info({k: v for k, v in store.meta().items()
                             if k in ("environment", "history_sha256")})
    if cfg.console_port:
        from .console import start as start_console

        try:
            start_console(cfg.console_host, cfg.console_port, cfg.console_token, store.path)
        except OSError as e:
            raise StartupError(f"CONSOLE_PORT {cfg.console_port} cannot be opened: "
                               f"{e.strerror or e}") from e
    log.info("serving: hospital %s, pager %s, state %s, detector %s %s", cfg.mllp_address,
             cfg.pager_address, cfg.state_dir, detector.name, detector.version)
    asyncio.run(Service(cfg, store, detector).run())
