"""Start-up of the service: open the state, make it this environment's (provenance), import
the history, load the detector. Each step either succeeds, degrades with a logged reason (a
missing history file), or raises StartupError with what to do.
"""

from __future__ import annotations

import logging
import os
import time

from . import metrics
from .config import Config
from .detect import Detector
from .detect.nhs import NhsDetector
from .history import ImportSummary, fingerprint, read_history
from .provenance import Overlap, decide
from .store import Store, open_store

log = logging.getLogger(__name__)


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


def normaliser(cfg: Config):
    """The feed profile's MRN normalisation for the history's numbers, when it has one: a
    history keyed `0001001` must be found by a feed the profile reads as `1001`."""
    return cfg.feed_profile.normalise_mrn if cfg.feed_profile.normalises_mrns else None


def _import(store: Store, path: str, digest: str, cfg: Config) -> None:
    log.info("importing history %s", path)
    summary = ImportSummary()
    started = time.perf_counter()
    added = store.import_results(read_history(path, summary, normaliser(cfg)))
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


def reconcile(store: Store, cfg: Config) -> bool:
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
            overlap = Overlap(*store.history_overlap(read_history(path, ImportSummary(),
                                                                  normaliser(cfg))))
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
            _import(store, path, digest, cfg)
        except (ValueError, UnicodeError) as e:
            log.error("history file %s is not usable (%s): starting without it", path, e)
            return False
    else:
        log.info("history %s already imported (sha256 %s)", path, digest[:12])
    return True


def open_state(cfg: Config) -> Store:
    try:
        os.makedirs(cfg.state_dir, exist_ok=True)
    except OSError as e:
        raise StartupError(f"STATE_DIR {cfg.state_dir} cannot be created: {e.strerror}") from e
    store = open_store(cfg.state_dir, cfg.state_url, cfg.durability)
    if "created_at" not in store.meta():
        with store.transaction():
            store.set_meta(created_at=str(int(time.time())))
    return store
