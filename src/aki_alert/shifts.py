"""How the model holds up under shift (`aki-alert evaluate --shifts`): the default model and the
NHS algorithm on the test cohort as it is and shifted as another hospital, a new assay or
another population would shift it.

Every row of the table is judged twice, as `evaluate` does: live-style (every result in time
order, paged once per episode and re-paged inside it as the service does, `repage.py`, each
detector with its shipped policy; strict hospital scoring: an early page is a false positive
and uses up the episode unless a re-page follows) and at the labelled point (each row's last
result). The model's live-style F3 without re-paging is shown beside it. The shifts:

- `test`: the cohort as it is.
- `cohort-2025`: an older public cohort (another hospital in effect: creatinine runs ~35 %
  higher, and moderate rises in the young are AKI there). Used to test, never to choose.
- assay ×1.15 / +15 µmol/L: a new creatinine assay reads higher; applied to the newest result
  only (the change falls between the baseline and the judged result: ratios and rises grow)
  and to every result (a hospital whose assay always read so).
- demographics withheld: no admission seen, the model judges without age and sex.
- age +15 / −15 years: the same patients made older or younger (ages clipped to 0–120): the
  labels stay, so a model leaning on age is caught out.
- subsets aged ≥ 65 and < 18: the older and younger patients of the cohort as they are.

The targets (issue 18): the model's live-style F3 ≥ 0.97 on every row, ≥ 0.997 on `test`, and
never below the NHS algorithm (stage ≥ 1) either live-style or at the labelled point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .population import ROBUST, CreatinineCounts, choose
from .repage import policy_for
from .train import Repaging, Row, Scores, last_scores, model_scores, nhs_points, read_cohort, replay

LIVE_TARGET = 0.97
TEST_LIVE_TARGET = 0.997


@dataclass(frozen=True, slots=True)
class Shift:
    name: str
    rows: list[Row]
    demographics: bool = True  # False: the model judges without age and sex


def assay(rows: Sequence[Row], f: Callable[[float], float], newest_only: bool) -> list[Row]:
    """Rows with `f` applied to every result, or to each row's newest (last) result only."""
    if newest_only:
        return [replace(r, values=r.values[:-1] + [f(r.values[-1])]) for r in rows]
    return [replace(r, values=[f(v) for v in r.values]) for r in rows]


def aged(rows: Sequence[Row], years: float) -> list[Row]:
    """Rows with every known age moved by `years`, clipped to 0–120."""
    return [
        replace(r, age=min(max(r.age + years, 0.0), 120.0)) if r.age is not None else r
        for r in rows
    ]


def shifts(test: Sequence[Row], cohort: Sequence[Row] | None) -> list[Shift]:
    """The shifted versions of `test` (and the other cohort, when given) the table reports."""
    test = list(test)
    out = [Shift("test", test)]
    if cohort is not None:
        out.append(Shift("cohort-2025", list(cohort)))
    for newest in (True, False):
        where = "newest result" if newest else "every result"
        out.append(Shift(f"assay ×1.15, {where}", assay(test, lambda v: v * 1.15, newest)))
        out.append(Shift(f"assay +15 µmol/L, {where}", assay(test, lambda v: v + 15.0, newest)))
    out += [
        Shift("demographics withheld", test, demographics=False),
        Shift("ages +15 years", aged(test, 15.0)),
        Shift("ages −15 years", aged(test, -15.0)),
        Shift("subset aged ≥ 65", [r for r in test if r.age is not None and r.age >= 65.0]),
        Shift("subset aged < 18", [r for r in test if r.age is not None and r.age < 18.0]),
    ]
    return [s for s in out if s.rows]


@dataclass(frozen=True, slots=True)
class ShiftResult:
    name: str
    rows: int
    aki: int
    served: str          # the model's version (as served: chosen by the rows' history)
    model_live: Scores
    model_plain: Scores  # live-style without re-paging, for comparison
    model_last: Scores
    nhs_live: Scores
    nhs_last: Scores

    def misses(self) -> list[str]:
        """The targets this row misses (empty when it meets them all)."""
        out = []
        target = TEST_LIVE_TARGET if self.name == "test" else LIVE_TARGET
        if self.model_live.f3 < target:
            out.append(f"live-style F3 {self.model_live.f3:.4f} < {target}")
        if self.model_live.f3 < self.nhs_live.f3:
            out.append("below NHS live-style")
        if self.model_last.f3 < self.nhs_last.f3:
            out.append("below NHS at the labelled point")
        return out


def history_of(rows: Sequence[Row]) -> CreatinineCounts:
    """What a history file of these rows' hospital would hold: every result before each row's
    last (judged) one."""
    return CreatinineCounts().add(v for r in rows for v in r.values[:-1])


def evaluate_shifts(default, test: Sequence[Row], cohort: Sequence[Row] | None,
                    robust=None) -> list[ShiftResult]:
    """The table's rows for the model `default`; with `robust`, for the models as the service
    serves them (population.py: on each row the one its history chooses)."""
    out = []
    for s in shifts(test, cohort):
        det = default if robust is None else choose(default, robust, history_of(s.rows)).detector
        scores = model_scores(det, s.rows, s.demographics)
        stages = nhs_points(s.rows)
        th = det.threshold
        out.append(
            ShiftResult(
                s.name,
                len(s.rows),
                sum(r.aki for r in s.rows),
                det.version,
                replay(s.rows, scores, th, Repaging(policy_for(det.name), stages)),
                replay(s.rows, scores, th),
                last_scores(s.rows, scores, th),
                replay(s.rows, stages, 1, Repaging(policy_for("nhs"), stages)),
                last_scores(s.rows, stages, 1),
            )
        )
    return out


def table(results: Sequence[ShiftResult], version: str) -> str:
    """The shift table as Markdown."""
    lines = [
        f"| shift | rows (AKI) | served | model {version} live-style F3 | without re-paging "
        "| NHS live-style F3 "
        f"| model {version} labelled-point F3 | NHS labelled-point F3 | model FP / FN live "
        "| meets targets |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        miss = r.misses()
        lines.append(
            f"| {r.name} | {r.rows} ({r.aki}) | {r.served} | {r.model_live.f3:.4f} "
            f"| {r.model_plain.f3:.4f} | {r.nhs_live.f3:.4f} "
            f"| {r.model_last.f3:.4f} | {r.nhs_last.f3:.4f} "
            f"| {r.model_live.fp} / {r.model_live.fn} | {'yes' if not miss else '; '.join(miss)} |"
        )
    return "\n".join(lines)


def default_cohort(data: Path) -> Path | None:
    """`cohort-2025/test.csv` beside the test cohort, when present."""
    path = data.parent / "cohort-2025" / "test.csv"
    return path if path.exists() else None


def run(model_path: Path | None, data: Path, cohort: Path | None, log=print) -> list[ShiftResult]:
    """Loads the model and the cohorts, prints the shift table, returns its rows. Without
    `model_path`, the models as the service serves them by default: the default model, or the
    shift-robust one where a row's history shows another population (population.py)."""
    from .detect.model import MODELS_DIR, load_model

    det = load_model(model_path)
    robust = load_model(MODELS_DIR / ROBUST) if model_path is None else None
    test, skipped = read_cohort(data)
    if not test:
        raise ValueError(f"{data}: no usable rows ({skipped} skipped)")
    other = None
    if cohort is not None:
        other, skipped_other = read_cohort(cohort)
        if not other:
            raise ValueError(f"{cohort}: no usable rows ({skipped_other} skipped)")
    results = evaluate_shifts(det, test, other, robust)
    if robust is None:
        label = det.version
        log(f"model {label} (threshold {det.threshold}) against the NHS algorithm (stage >= 1)")
    else:
        label = "as served"
        log(f"the models as served: {det.version} (threshold {det.threshold}), or "
            f"{robust.version} (threshold {robust.threshold}) where the rows' history shows "
            "another population; against the NHS algorithm (stage >= 1)")
    log(f"test: {data}" + (f"; cohort-2025: {cohort}" if cohort else "; no cohort-2025 file"))
    log(table(results, label))
    missed = [r for r in results if r.misses()]
    log(f"targets met on {len(results) - len(missed)} of {len(results)} rows")
    return results
