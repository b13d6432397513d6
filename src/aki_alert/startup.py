"""Start-up of the service: open the state, make it this environment's (provenance), import
the history, load the detector. Each step either succeeds, degrades with a logged reason (a
missing history file), or raises StartupError with what to do.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator

from . import metrics, population
from .config import Config
from .detect import Detector
from .detect.nhs import NhsDetector
from .hl7 import FeedProfile
from .history import ImportSummary, check_header, fingerprint, read_history
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


def load_robust(cfg: Config) -> Detector | None:
    """The shipped model to serve instead of the default on another population
    (MODEL_ON_SHIFT); None with DETECTOR=nhs, an explicit MODEL_PATH, or MODEL_ON_SHIFT=none."""
    if cfg.detector != "model" or cfg.model_path is not None:
        return None
    return shipped_model(cfg.model_on_shift)


def shipped_model(name: str | None) -> Detector | None:
    """The shipped model `name` (MODEL_ON_SHIFT; None: none); StartupError for another name."""
    if name is None:
        return None
    from .detect.model import MODELS_DIR, ModelLoadError, load_model

    path = MODELS_DIR / name
    if "/" in name or not (path / "model.json").is_file():
        shipped = sorted(p.name for p in MODELS_DIR.iterdir() if (p / "model.json").is_file())
        raise StartupError(f"MODEL_ON_SHIFT {name!r} is not a shipped model; "
                           f"one of {', '.join(shipped)}, or none")
    try:
        return load_model(path)
    except ModelLoadError as e:
        raise StartupError(f"cannot load MODEL_ON_SHIFT's model: {e}") from e


def serving(store: Store, default: Detector, robust: Detector | None) -> population.Choice:
    """Which of the two models serves this state's hospital (population.py)."""
    return population.choose(default, robust, population.CreatinineCounts.from_json(
        store.meta().get(population.META_KEY)))


def _history(path: str, summary: ImportSummary, progress: Callable[[int], None],
             profile: FeedProfile) -> Iterator[tuple[str, int, float]]:
    """The history's results, their patient numbers normalised as the feed's are."""
    rows = read_history(path, summary, progress)
    if profile.strip_leading_zeros or profile.upper_case:
        return ((profile.normalise(mrn), t, v) for mrn, t, v in rows)
    return rows


def _import(store: Store, path: str, digest: str, profile: FeedProfile) -> None:
    log.info("importing history %s", path)
    summary = ImportSummary()
    started = time.perf_counter()
    creatinine = population.CreatinineCounts()
    added = store.import_results(creatinine.counted(
        _history(path, summary, _progress("import", started), profile)))
    if summary.results > added:
        summary.skipped["duplicate results"] += summary.results - added
        summary.results = added
    with store.transaction():
        store.set_meta(history_sha256=digest, history_path=path,
                       history_imported_at=str(int(time.time())),
                       **{population.META_KEY: creatinine.to_json()})
    metrics.HISTORY_ROWS.inc(added)
    for reason, n in summary.skipped.items():
        metrics.HISTORY_SKIPPED.labels(reason=reason).inc(n)
    log.info("history %s imported in %.2fs: %s", path, time.perf_counter() - started,
             summary.describe())


def _progress(what: str, started: float) -> Callable[[int], None]:
    def report(results: int) -> None:
        log.info("history %s: %d results read (%.0fs)", what, results,
                 time.perf_counter() - started)
    return report


def _overlap(store: Store, path: str, profile: FeedProfile) -> Overlap | None:
    """How the history file relates to the state's history; None when the file is unusable."""
    try:
        if not store.has_history():
            # Nothing to compare with (a first start): scanning the file would count (0, 0, 0),
            # and only a missing header could make it unusable.
            check_header(path)
            return Overlap(0, 0, 0)
        log.info("comparing history %s with the state's", path)
        rows = _history(path, ImportSummary(), _progress("comparison", time.perf_counter()),
                        profile)
        return Overlap(*store.history_overlap(rows))
    except (ValueError, UnicodeError):
        return None


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
        overlap = _overlap(store, path, cfg.feed_profile)
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
            _import(store, path, digest, cfg.feed_profile)
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
