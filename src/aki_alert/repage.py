"""Re-paging within an episode: when a later positive is markedly worse than the one paged.

A page opens a 90-day episode (episodes.py) and later positives of the episode are not paged:
they are the injury still showing. But the service's page can be wrong: a moderate rise paged,
and the patient's real injury (the one the hospital counts, at its own time) weeks or hours
later, silenced by the episode. The hospital counts one AKI time per patient and weighs a miss
nine times a false page, so a second page for a result that is much worse than the paged one
is worth its risk when it is the injury more than about one time in ten.

`should_repage` decides that from what the service holds at that moment: the episode's page
(its result time, the detector's score and NHS stage as its outbox explanation recorded them),
the patient's earlier results (the paged value and the lowest value since are read from them),
and the new positive judgement. It is pure and cheap, and runs only for a positive inside an
open episode (rare: a few a day). The service (ingest.py) and the offline reference
(offline.py) both call it, so they agree.

A re-page is only ever for a result sampled after the paged one (never the same `MRN,T`), and
only for a result worse than the paged one in at least one way (a higher NHS stage, a higher
score or a higher value). It then becomes the episode's page: the episode runs from it, and a
further re-page must be markedly worse than it in turn.

The thresholds are tuned per detector on labelled training streams by
`python -m benchmarks.bench_repage --tune` (never on test data) and live in `repage.json`
beside this module: one place, re-tuned in one command after the model changes.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .detect import Judgement
from .timeutil import HOUR

PARAMS_PATH = Path(__file__).resolve().parent / "repage.json"


@dataclass(frozen=True, slots=True)
class Policy:
    """When a positive inside an open episode pages again. A re-page needs every gate (a
    minimum time since the paged result, a minimum score) and at least one trigger; a trigger
    set to None is off, and a policy with no trigger never re-pages."""

    min_hours: float = 0.0                # gate: hours since the paged result's sample time
    min_score: float | None = None        # gate: the new result's score at least this
    stage_gain: int | None = None         # trigger: NHS stage >= the paged stage + this
    value_ratio: float | None = None      # trigger: value >= this × the paged value
    nadir_rise: float | None = None       # trigger: value >= this × the lowest result since
    score_gain: float | None = None       # trigger: score >= the paged score + this

    @property
    def enabled(self) -> bool:
        return any(x is not None for x in (self.stage_gain, self.value_ratio, self.nadir_rise,
                                           self.score_gain))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Policy":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown re-page parameters {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


NEVER = Policy()


@dataclass(frozen=True, slots=True)
class PagedResult:
    """What the service keeps of the episode's page: its result's sample time, and the
    detector's score and NHS stage as the outbox explanation recorded them."""

    time: int
    score: float
    stage: int | None

    @classmethod
    def of(cls, time: int, j: Judgement) -> "PagedResult":
        """From the judgement that paged, as its explanation records it (score to 6 places)."""
        return cls(time, round(j.score, 6), j.stage)

    @classmethod
    def from_explanation(cls, time: int, explanation: str) -> "PagedResult | None":
        """From the outbox row's explanation JSON; None when it cannot be read."""
        try:
            doc = json.loads(explanation)
            score = float(doc["score"])
            stage = doc.get("stage")
        except (ValueError, TypeError, KeyError):
            return None
        if not math.isfinite(score) or not (stage is None or isinstance(stage, int)):
            return None
        return cls(time, score, stage)


def should_repage(policy: Policy, paged: PagedResult, time: int, value: float, j: Judgement,
                  times: Sequence[int], values: Sequence[float]) -> bool:
    """Whether a positive judgement `j` of the result (`time`, `value`), inside the episode
    opened by `paged`, pages again. `times`/`values`: the patient's results in ascending time
    order; only those before `time` are read (the paged one among them)."""
    if not (j.positive and policy.enabled) or time <= paged.time:
        return False
    if time - paged.time < policy.min_hours * HOUR:
        return False
    if policy.min_score is not None and j.score < policy.min_score:
        return False
    end = bisect_left(times, time)
    i = bisect_left(times, paged.time, 0, end)
    paged_value = values[i] if i < end and times[i] == paged.time else None
    stage, paged_stage = j.stage or 0, paged.stage or 0
    # Never for a result no worse than the paged one in any way.
    if not (stage > paged_stage or j.score > paged.score
            or (paged_value is not None and value > paged_value)):
        return False
    if policy.stage_gain is not None and stage >= paged_stage + policy.stage_gain:
        return True
    if policy.score_gain is not None and j.score >= paged.score + policy.score_gain:
        return True
    if policy.value_ratio is not None and paged_value is not None \
            and value >= policy.value_ratio * paged_value:
        return True
    since = i + 1 if paged_value is not None else i
    if policy.nadir_rise is not None and since < end:
        nadir = min(values[since:end])
        if nadir > 0 and value >= policy.nadir_rise * nadir:
            return True
    return False


def load_policies(path: Path = PARAMS_PATH) -> dict[str, Policy]:
    """The tuned policy of each detector (by its name) from `repage.json`."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {name: Policy.from_dict(p) for name, p in doc["policies"].items()}


_POLICIES: dict[str, Policy] | None = None


def policy_for(detector_name: str) -> Policy:
    """The shipped policy for a detector (`NEVER` for a detector it was not tuned for)."""
    global _POLICIES
    if _POLICIES is None:
        _POLICIES = load_policies()
    return _POLICIES.get(detector_name, NEVER)
