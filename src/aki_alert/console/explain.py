"""Why a page was sent, whether it reached the pager, and what the patient's creatinine did
since: pure functions of a page's stored explanation and the patient's results (no I/O, no
HTML; `render` words and draws them).

The rule that gave the NHS stage comes from `detect/nhs.py` (`stage_rule`): a stage and its
ratio are enough to tell the ratio's own stage from the absolute rule (stage 3 with a ratio
under 3, which only C1 > 354 µmol/L gives) and from the 48-hour rise (stage 1 without a ratio
of 1.5). The results say which reference value the baseline was (RV1 or RV2) and, for the
rise, which earlier result it was a rise over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..detect import LOOKBACK
from ..detect.nhs import ABSOLUTE, RATIO, RISE, RISE_WINDOW, median, ratio_stage, stage_rule
from ..timeutil import DAY

__all__ = ["ABSOLUTE", "RATIO", "RISE", "OVERDUE_SECONDS", "PageReason", "Since",
           "baseline_window", "not_delivered", "page_reason", "since_page", "trend"]

# A page still pending this long after it was decided has not reached the pager: the clinical
# requirement is 3 s, and the pager's retries are seconds apart.
OVERDUE_SECONDS = 60.0
# The latest result within ±10% of the paged one is "steady".
STEADY = 0.10


def not_delivered(status: str, created_at: float, now: float,
                  overdue: float = OVERDUE_SECONDS) -> bool:
    """True for a page that never reached the pager: refused for good (dead-lettered), or still
    pending `overdue` seconds after it was decided. A replayed page (suppressed) was never
    meant to be sent."""
    return status == "dead" or (status == "pending" and now - created_at > overdue)


def baseline_window(times: Sequence[int], values: Sequence[float], at: int,
                    baseline: float | None) -> str | None:
    """Which NHS reference value `baseline` was for a result at `at`: RV1 (lowest of the
    previous 0–7 days) or RV2 (median of 8–365 days before); None when neither matches (the
    results have changed since, or the detector's baseline is not the NHS one)."""
    if baseline is None:
        return None
    recent = [v for t, v in zip(times, values, strict=True) if at - 7 * DAY <= t < at]
    older = [v for t, v in zip(times, values, strict=True) if at - LOOKBACK <= t < at - 7 * DAY]
    if recent and abs(min(recent) - baseline) < 1e-6:
        return "RV1"
    if older and abs(median(older) - baseline) < 1e-6:
        return "RV2"
    return None


@dataclass(frozen=True, slots=True)
class PageReason:
    """What a page's explanation says, with the rule named."""

    stage: int | None               # the NHS stage stored with the page
    rule: str | None                # RATIO, ABSOLUTE, RISE; None: no NHS stage (the model's)
    value: float | None             # the paged result, µmol/L
    baseline: float | None          # the reference value of the ratio
    ratio: float | None             # value / baseline
    ratio_stage: int                # the stage the ratio alone gives
    window: str | None              # "RV1", "RV2", None when the results no longer say
    rise_from: tuple[int, float] | None   # RISE: the lowest result of the 48 hours before

    @property
    def rise(self) -> float | None:
        if self.rise_from is None or self.value is None:
            return None
        return self.value - self.rise_from[1]


def page_reason(stage: int | None, ratio: float | None, baseline: float | None,
                value: float | None, at: int, times: Sequence[int],
                values: Sequence[float]) -> PageReason:
    """The reason of a page for the result at `at` (stored `stage`, `ratio`, `baseline`; its
    `value`), given the patient's results (`times` ascending, `values`)."""
    rule = stage_rule(stage, ratio)
    rise_from = None
    if rule == RISE:
        prior = [(t, v) for t, v in zip(times, values, strict=True) if at - RISE_WINDOW <= t < at]
        if prior:
            rise_from = min(prior, key=lambda p: (p[1], p[0]))
    return PageReason(stage, rule, value, baseline, ratio, ratio_stage(ratio),
                      baseline_window(times, values, at, baseline), rise_from)


@dataclass(frozen=True, slots=True)
class Since:
    """The patient's results sampled after the paged one."""

    count: int
    latest_time: int | None
    latest_value: float | None
    change: float | None            # latest − paged, µmol/L
    trend: str | None               # rising, falling or steady against the paged value


def trend(paged: float | None, latest: float | None) -> str | None:
    """rising / falling when the latest result is more than 10% above / below the paged one,
    else steady; None without both."""
    if paged is None or latest is None or paged <= 0:
        return None
    if latest > paged * (1 + STEADY):
        return "rising"
    if latest < paged * (1 - STEADY):
        return "falling"
    return "steady"


def since_page(paged: float | None, count: int, latest_time: int | None,
               latest_value: float | None) -> Since:
    if not count or latest_value is None:
        return Since(0, None, None, None, None)
    change = latest_value - paged if paged is not None else None
    return Since(count, latest_time, latest_value, change, trend(paged, latest_value))
