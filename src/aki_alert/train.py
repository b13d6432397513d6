"""Offline training and evaluation of the AKI model (`aki-alert train | evaluate`).

Never imported by `serve`: numpy, scikit-learn and matplotlib are imported inside the
commands only. One labelled example per cohort row: the row's last result, judged against the
results before it (contract §6: with aki=y the last result is the point of diagnosis). Every
row is used a second time with age and sex removed, so that the model has learnt what to do
for a patient whose admission the service never saw.

Training compares, by stratified cross-validation on the training cohort, the NHS algorithm
(stage >= 1, and the hospital's stage >= 2 variant), a logistic regression, boosted trees, and
trees boosted from the logistic regression. Held-out rows are scored on their labelled last
result and replayed over all their results as the service would page them (`replay`); the
threshold and the candidate maximise both F3s together. The winner is refitted on the whole
cohort and exported as JSON for the plain-Python evaluator in `detect/model.py`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
import sys
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable, Sequence

from .detect.features import (DEMOGRAPHICS, FEATURE_VERSION, FEATURES, UNKNOWN_DEMOGRAPHICS,
                              features)
from .detect.model import FORMAT, probe_vectors
from .detect.nhs import nhs_stage
from .detect import Judgement
from .episodes import episode_start_after, opens_episode
from .repage import PagedResult, Policy, policy_for, should_repage
from .timeutil import parse_csv_time

SEED = 20240101
FOLDS = 5
# Boosted-tree configurations tried by cross-validation: (trees, depth, learning rate).
GBT_GRID = ((100, 3, 0.1), (50, 2, 0.1))
# Features the model can be trained without (`--exclude`). By default it sees all of them: on
# this hospital's data age helps. But age and the absolute creatinine level relate differently
# to the label in the older cohorts (cohort-2025): trained with them, F3 there falls to ~0.95;
# with relative features only it stays near 0.98. `--exclude value,age,has_age` builds that
# robust variant (shipped beside the default, see docs/model-card.md).
DEFAULT_EXCLUDED: tuple[str, ...] = ()
# Synthetic assay changes for `--augment`: every result of a copy × m + a (see assay_shifted).
ASSAY_MUL = (0.85, 1.2)
ASSAY_ADD = (-10.0, 20.0)
THRESHOLDS = (0.001, 0.002, 0.005) + tuple(round(0.01 * i, 2) for i in range(1, 100))


@dataclass(frozen=True, slots=True)
class Row:
    """One labelled cohort row: demographics (None when the file leaves them empty), the label,
    and the dated results (ascending)."""

    age: float | None
    sex: str | None  # "M" / "F"
    aki: bool
    times: list[int]
    values: list[float]


# ---------------------------------------------------------------- reading cohorts


def parse_row(rec: Sequence[str]) -> Row:
    """A cohort CSV record as a Row; ValueError for junk (bad fields, absurd values, disorder).
    An empty age or sex is unknown (None): the row is judged without it, as the service judges
    a patient whose admission it never saw."""
    if len(rec) < 5:
        raise ValueError("too few fields")
    age: float | None = None
    if rec[0].strip():
        age = float(rec[0])
        if not 0.0 <= age <= 130.0:
            raise ValueError(f"age {age}")
    sex: str | None = rec[1].strip().upper() or None
    aki = rec[2].strip().lower()
    if sex not in ("M", "F", None) or aki not in ("y", "n"):
        raise ValueError("sex or aki flag")
    times: list[int] = []
    values: list[float] = []
    for i in range(3, len(rec) - 1, 2):
        if not rec[i].strip() and not rec[i + 1].strip():
            continue  # padding
        t, v = parse_csv_time(rec[i]), float(rec[i + 1])
        if not (math.isfinite(v) and 0.0 < v < 5000.0):
            raise ValueError(f"creatinine {v}")
        if times and t < times[-1]:
            raise ValueError("results out of time order")
        times.append(t)
        values.append(v)
    if not times:
        raise ValueError("no results")
    return Row(age, sex, aki == "y", times, values)


def read_cohort(path: str | Path) -> tuple[list[Row], int]:
    """The rows of a cohort CSV (`age,sex,aki,creatinine_date_0,…`) and how many were junk."""
    rows: list[Row] = []
    skipped = 0
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        next(reader, None)
        for rec in reader:
            if not any(field.strip() for field in rec):
                continue
            try:
                rows.append(parse_row(rec))
            except ValueError:
                skipped += 1
    return rows, skipped


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- scores


@dataclass(frozen=True, slots=True)
class Scores:
    tp: int
    fp: int
    fn: int
    tn: int

    @classmethod
    def of(cls, labels: Sequence[bool], predicted: Sequence[bool]) -> "Scores":
        tp = sum(1 for y, p in zip(labels, predicted, strict=True) if y and p)
        fp = sum(1 for y, p in zip(labels, predicted, strict=True) if p and not y)
        fn = sum(1 for y, p in zip(labels, predicted, strict=True) if y and not p)
        return cls(tp, fp, fn, len(labels) - tp - fp - fn)

    @property
    def f3(self) -> float:
        d = 10 * self.tp + 9 * self.fn + self.fp
        return 10 * self.tp / d if d else 1.0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    def line(self) -> str:
        return (
            f"F3 {self.f3:.4f}  precision {self.precision:.4f}  recall {self.recall:.4f}  "
            f"TP {self.tp}  FP {self.fp}  FN {self.fn}  TN {self.tn}"
        )


@dataclass(frozen=True, slots=True)
class Repaging:
    """The service's re-paging within an episode (`repage.py`) in a replay: the detector's
    policy, and the NHS stage of every result (row after row, as the scores) that it reads."""

    policy: Policy
    stages: Sequence[int]


def replay(rows: Sequence[Row], scores: Sequence[float], threshold: float,
           repaging: Repaging | None = None) -> Scores:
    """The hospital's strict scoring (contract §5) when every result of every row is judged in
    time order, as the service does, and paged under the episode rule (`episodes.py`) and,
    with `repaging`, the service's re-paging inside an episode (`repage.should_repage`).

    `scores` holds one score per result, row after row (as `point_features`). A page at an AKI
    row's last result is a TP; every other page is a FP (an early page also uses up the episode,
    so the real AKI goes unpaged unless it is re-paged: a FN too); TN counts results not paged.
    """
    tp = fp = fn = 0
    at = 0
    for r in rows:
        n = len(r.times)
        start = None
        paged: dict[int, PagedResult] = {}
        paged_last = False
        for i in range(n):
            score = scores[at + i]
            if score < threshold:
                continue
            j = None if repaging is None else Judgement(
                True, score, threshold, "model", "", repaging.stages[at + i], None, None)
            if not opens_episode(start, r.times[i]):
                page = None if j is None else paged.get(start)  # type: ignore[arg-type]
                if page is None or not should_repage(repaging.policy, page, r.times[i],
                                                     r.values[i], j, r.times, r.values):
                    continue
            if j is not None:
                paged[r.times[i]] = PagedResult.of(r.times[i], j)
            start = episode_start_after(start, r.times[i])
            if r.aki and i == n - 1:
                paged_last = True
            else:
                fp += 1
        at += n
        if r.aki:
            tp += paged_last
            fn += not paged_last
    return Scores(tp, fp, fn, at - tp - fp - fn)


def last_scores(rows: Sequence[Row], scores: Sequence[float], threshold: float) -> Scores:
    """Scores of each row's last result only (the labelled point), from per-result scores."""
    ends = list(accumulate(len(r.times) for r in rows))
    return Scores.of([r.aki for r in rows], [scores[e - 1] >= threshold for e in ends])


def objective(last: Scores, replayed: Scores) -> float:
    """What thresholds and candidates are chosen by: F3 on the labelled points (each row's last
    result, the acceptance measure) plus F3 replayed over every result (what the service does:
    an early page is a false positive and uses up the episode), equally weighted."""
    return round(last.f3 + replayed.f3, 9)


def best_threshold(rows: Sequence[Row], scores: Sequence[float], tolerance: float = 0.0,
                   repaging: Repaging | None = None) -> float:
    """The threshold of best `objective` (the replay with `repaging`, as the service pages);
    the middle one of the best plateau. With a
    `tolerance`, the lowest threshold whose objective is within it of the best: F3 weighs a
    miss nine times a false page, so where thresholds do about as well on this hospital's
    data, the more sensitive one is the safer under a shift the data does not show."""
    curve = [
        (t, objective(last_scores(rows, scores, t), replay(rows, scores, t, repaging)))
        for t in THRESHOLDS
    ]
    top = max(f for _, f in curve)
    if tolerance > 0.0:
        return min(t for t, f in curve if f >= top - tolerance)
    best = [t for t, f in curve if f == top]
    return best[len(best) // 2]


# ---------------------------------------------------------------- models


def _gbt(trees: int, depth: int, rate: float, base=None):
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(
        n_estimators=trees, max_depth=depth, learning_rate=rate, init=base, random_state=SEED
    )


def _logistic():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))


def candidates() -> dict[str, Callable[[], Any]]:
    """Name -> factory of an unfitted classifier. Boosting "from a logistic regression" starts
    the trees at the linear model's log-odds, so they only learn its residual interactions."""
    out: dict[str, Callable[[], Any]] = {"logistic": _logistic}
    for trees, depth, rate in GBT_GRID:
        tag = f"gbt-{trees}x{depth}-lr{rate}"
        out[tag] = lambda a=trees, b=depth, c=rate: _gbt(a, b, c)
        out[f"logistic+{tag}"] = lambda a=trees, b=depth, c=rate: _gbt(a, b, c, _logistic())
    return out


def point_features(rows: Sequence[Row], demographics: bool = True) -> list[list[float]]:
    """Features of every result of every row (against the row's earlier results), row after row.
    `demographics=False` judges as for a patient whose admission was never seen."""
    out = []
    for r in rows:
        age, sex = (r.age, r.sex) if demographics else (None, None)
        for i in range(len(r.times)):
            out.append(features(r.times[:i], r.values[:i], r.times[i], r.values[i], age, sex))
    return out


def nhs_points(rows: Sequence[Row]) -> list[int]:
    """The NHS stage of every result of every row, row after row."""
    return [
        nhs_stage(r.times[:i], r.values[:i], r.times[i], r.values[i]).stage
        for r in rows
        for i in range(len(r.times))
    ]


def assay_shifted(rows: Sequence[Row], copies: int, seed: int = SEED) -> list[Row]:
    """`copies` synthetic versions of every row as another assay would have measured it: every
    result × m + a, with m uniform in ASSAY_MUL and a in ASSAY_ADD (µmol/L), drawn per copy and
    row. The labels stay: the patient is the same, only the lab's reading moved."""
    rnd = random.Random(seed)
    out = []
    for _ in range(copies):
        for r in rows:
            m, a = rnd.uniform(*ASSAY_MUL), rnd.uniform(*ASSAY_ADD)
            out.append(Row(r.age, r.sex, r.aki, r.times, [max(1.0, v * m + a) for v in r.values]))
    return out


@dataclass(frozen=True, slots=True)
class Recipe:
    """How the models learn, beyond the columns they see (the `train` options): from every
    result (`live`: earlier ones as negatives) or the labelled ones only; with `augment`
    assay-shifted copies of every row; the candidates tried (`names`, None: all), the NHS
    guardrails tried beside each (`guards`, None: none), and the threshold's `tolerance`."""

    live: bool = False
    augment: int = 0
    names: Sequence[str] | None = None
    guards: Sequence[int | None] = (None,)
    tolerance: float = 0.0


@dataclass(frozen=True, slots=True)
class Examples:
    """What the models learn from, for `rows` (and their assay-shifted copies): per result the
    feature vectors with and without demographics, the label (a row's last result carries the
    row's label; with `live`, every earlier result is a negative: a page there is a false
    positive, and uses up the episode), and the row it belongs to."""

    P: Any  # features of every result, with age/sex (numpy, rows × FEATURES)
    P0: Any  # the same without age/sex
    row_of: Any  # index of each result's row (shifted copies: index modulo the cohort size)
    last: Any  # True at each row's last result
    y: Any  # the label of each result

    @classmethod
    def of(cls, rows: Sequence[Row], n_rows: int) -> "Examples":
        import numpy as np

        lengths = np.array([len(r.times) for r in rows], dtype=int)
        row_of = np.repeat(np.arange(len(rows)) % max(n_rows, 1), lengths)
        last = np.zeros(int(lengths.sum()), dtype=bool)
        last[np.cumsum(lengths) - 1] = True
        y = np.zeros(len(last), dtype=bool)
        y[np.cumsum(lengths) - 1] = [r.aki for r in rows]
        P = np.asarray(point_features(rows))
        P0 = P.copy()       # no other feature depends on age or sex (test_features)
        P0[:, [FEATURES.index(n) for n in DEMOGRAPHICS]] = UNKNOWN_DEMOGRAPHICS
        return cls(P, P0, row_of, last, y)

    def training_set(self, row_ids, cols: Sequence[int], live: bool):
        """(X, y) of the rows `row_ids`: each labelled (last) result twice, with and without
        age/sex; with `live`, each earlier result once (without age/sex for odd rows)."""
        import numpy as np

        m = np.isin(self.row_of, row_ids)
        at = m & self.last
        parts = [self.P[at], self.P0[at]]
        labels = [self.y[at], self.y[at]]
        if live:
            odd = self.row_of % 2 == 1
            early = m & ~self.last
            parts += [self.P[early & ~odd], self.P0[early & odd]]
            labels += [self.y[early & ~odd], self.y[early & odd]]
        return np.vstack(parts)[:, list(cols)], np.concatenate(labels)


def learning_set(ex: Examples, aug: Examples | None, row_ids, cols: Sequence[int], live: bool):
    """(X, y) the models learn from for the rows `row_ids`: theirs, and their assay-shifted
    copies' when there are some (`Examples.training_set`)."""
    import numpy as np

    X, y = ex.training_set(row_ids, cols, live)
    if aug is None:
        return X, y
    Xa, ya = aug.training_set(row_ids, cols, live)
    return np.vstack([X, Xa]), np.concatenate([y, ya])


def guarded(scores: Sequence[float], stages: Sequence[int], guard: int | None) -> list[float]:
    """Scores with the NHS guardrail: 1.0 wherever the stage is at least `guard`."""
    if guard is None:
        return list(scores)
    return [1.0 if k >= guard else s for s, k in zip(scores, stages, strict=True)]


def cross_validate(
    rows: Sequence[Row],
    ex: Examples,
    aug: Examples | None,
    stages: Sequence[int],
    cols: Sequence[int],
    recipe: Recipe,
    log=print,
) -> dict[str, dict[str, Any]]:
    """Out-of-fold scores of the NHS algorithm and every candidate of the `recipe` (each with
    every guardrail: positive whenever the NHS stage is at least it). `ex`: the rows' examples,
    `aug`: their assay-shifted copies' (or None), `stages`: the NHS stage of every result.

    Models learn from the labelled points (each row's last result, with and without age/sex),
    with `live` from every earlier result too (as negatives), and from the assay-shifted
    copies (`assay_shifted`). The held-out rows, never
    shifted, are judged at every result: their last results give the labelled F3, the replay of
    all results the stream's, paged as the service pages them (`replay` with the detector's
    shipped re-paging policy); the threshold maximises `objective`.
    """
    import numpy as np
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    labels = np.array([r.aki for r in rows])
    last = np.flatnonzero(ex.last)
    P, P0 = ex.P[:, list(cols)], ex.P0[:, list(cols)]
    table: dict[str, dict[str, Any]] = {}
    nhs_repaging, model_repaging = Repaging(policy_for("nhs"), stages), Repaging(
        policy_for("model"), stages)
    for name, k in (("nhs (stage>=1)", 1), ("nhs hospital (stage>=2)", 2)):
        replayed = replay(rows, stages, k, nhs_repaging)
        table[name] = {
            "threshold": k,
            "guard": None,
            "last": last_scores(rows, stages, k),
            "replay": replayed,
            "replay_no_demographics": replayed,
            "log_loss": None,
        }
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=SEED).split(
        np.zeros(len(rows)), labels
    )
    folds = list(folds)
    for name, make in candidates().items():
        if recipe.names is not None and name not in recipe.names:
            continue
        oof = np.zeros(len(P))
        oof0 = np.zeros(len(P))
        for train_idx, test_idx in folds:
            model = make().fit(*learning_set(ex, aug, train_idx, cols, recipe.live))
            held = np.isin(ex.row_of, test_idx)
            oof[held] = model.predict_proba(P[held])[:, 1]
            oof0[held] = model.predict_proba(P0[held])[:, 1]
        loss = float(log_loss(labels, np.clip(oof[last], 1e-9, 1 - 1e-9)))
        for guard in recipe.guards:
            scores = guarded(oof.tolist(), stages, guard)
            scores0 = guarded(oof0.tolist(), stages, guard)
            th = best_threshold(rows, scores, recipe.tolerance, model_repaging)
            key = name if guard is None else f"{name} + NHS stage>={guard} guardrail"
            table[key] = {
                "candidate": name,
                "guard": guard,
                "threshold": th,
                "last": last_scores(rows, scores, th),
                "replay": replay(rows, scores, th, model_repaging),
                "replay_no_demographics": replay(rows, scores0, th, model_repaging),
                "log_loss": loss,
            }
            log(
                f"  {key:26s} {table[key]['last'].line()}  threshold {th}  "
                f"replayed F3 {table[key]['replay'].f3:.4f}"
            )
    return table


def select(table: dict[str, dict[str, Any]]) -> str:
    """The learnt candidate with the best out-of-fold `objective`, then the lowest log-loss."""
    learnt = [n for n in table if table[n]["log_loss"] is not None]
    return max(
        learnt,
        key=lambda n: (objective(table[n]["last"], table[n]["replay"]), -table[n]["log_loss"]),
    )


def _linear(pipeline, cols: Sequence[int]) -> tuple[float, list[float]]:
    """(intercept, weights over all FEATURES) of a StandardScaler + LogisticRegression pipeline."""
    scaler, lr = pipeline[0], pipeline[-1]
    w = lr.coef_[0] / scaler.scale_
    weights = [0.0] * len(FEATURES)
    for c, v in zip(cols, w, strict=True):
        weights[c] = float(v)
    return float(lr.intercept_[0] - (w * scaler.mean_).sum()), weights


def _trees(model, cols: Sequence[int]) -> list[dict[str, list]]:
    """The boosted trees as node arrays over all FEATURES, learning rate folded into the leaves."""
    out = []
    for est in model.estimators_[:, 0]:
        t = est.tree_
        leaf = t.children_left == -1
        out.append(
            {
                "feature": [-1 if lf else cols[f] for f, lf in zip(t.feature, leaf, strict=True)],
                "threshold": [
                    0.0 if lf else float(v) for v, lf in zip(t.threshold, leaf, strict=True)
                ],
                "left": [int(v) for v in t.children_left],
                "right": [int(v) for v in t.children_right],
                "value": [
                    float(model.learning_rate * v) if lf else 0.0
                    for v, lf in zip(t.value[:, 0, 0], leaf, strict=True)
                ],
            }
        )
    return out


def export(model, X_all, cols: Sequence[int]) -> dict[str, Any]:
    """The fitted model (on columns `cols`) as the artifact's `init`, `linear` and `trees` over
    all FEATURES, checked against scikit-learn's own predictions on `X_all`."""
    import numpy as np
    from sklearn.pipeline import Pipeline

    from .detect.model import compile_model

    if isinstance(model, Pipeline):
        init, weights = _linear(model, cols)
        parts = {"init": init, "linear": {"weights": weights, "clip": None}, "trees": []}
    elif not isinstance(model.init_, Pipeline):
        parts = {
            "init": float(model._raw_predict_init(X_all[:1, list(cols)])[0, 0]),
            "linear": None,
            "trees": _trees(model, cols),
        }
    else:
        init, weights = _linear(model.init_, cols)
        # sklearn clips the initial probability to [eps, 1 - eps] before taking its log-odds.
        eps = float(np.finfo(np.float64).eps)
        parts = {
            "init": init,
            "linear": {"weights": weights, "clip": math.log((1 - eps) / eps)},
            "trees": _trees(model, cols),
        }
    raw = compile_model(parts["init"], parts["linear"], parts["trees"], len(FEATURES))
    mine = 1.0 / (1.0 + np.exp(-np.array([raw(list(x)) for x in X_all])))
    worst = float(np.max(np.abs(mine - model.predict_proba(X_all[:, list(cols)])[:, 1])))
    if worst > 1e-6:
        raise RuntimeError(f"exported model's probabilities differ from scikit-learn's by {worst}")
    return parts


def training_reference(
    rows: Sequence[Row], ex: Examples, stages: Sequence[int], parts: dict[str, Any],
    threshold: float, guard: int | None
) -> dict[str, Any]:
    """What the service's drift metrics compare against (`drift.py`): histograms of the
    exported model's score and of creatinine over every result of the training rows judged in
    order (with age/sex, as for an admitted patient), and the share judged positive."""
    from .detect.model import compile_model
    from .drift import CREATININE_BOUNDS, SCORE_BOUNDS, histogram

    raw = compile_model(parts["init"], parts["linear"], parts["trees"], len(FEATURES))
    scores = [1.0 / (1.0 + math.exp(-min(max(raw(list(x)), -700.0), 700.0))) for x in ex.P]
    values = [v for r in rows for v in r.values]
    positive = sum(
        s >= threshold or (guard is not None and k >= guard)
        for s, k in zip(scores, stages, strict=True)
    )
    return {
        "population": "every result of the training rows, judged in order, with age and sex",
        "results": len(scores),
        "score": {"bounds": list(SCORE_BOUNDS),
                  "fractions": [round(f, 6) for f in histogram(scores, SCORE_BOUNDS)]},
        "creatinine": {"bounds": list(CREATININE_BOUNDS),
                       "fractions": [round(f, 6) for f in histogram(values, CREATININE_BOUNDS)]},
        "positive_rate": round(positive / len(scores), 6),
    }


def artifact_json(doc: dict[str, Any]) -> str:
    """The artifact as JSON, one top-level key and one tree per line (diff-friendly, compact)."""

    def dump(v: Any) -> str:
        return json.dumps(v, separators=(",", ":"))

    lines = []
    for k, v in doc.items():
        if k == "trees":
            v_text = "[\n" + ",\n".join(dump(t) for t in v) + "\n]"
        else:
            v_text = json.dumps(v, indent=None)
        lines.append(f"{json.dumps(k)}: {v_text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def cv_markdown(table: dict[str, dict[str, Any]], chosen: str) -> str:
    out = [
        "| candidate | threshold | F3 | precision | recall | TP | FP | FN "
        "| replayed F3 | replayed FP | replayed FN | replayed F3 without age/sex |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in table.items():
        s, z = r["last"], r["replay"]
        mark = " **(chosen)**" if name == chosen else ""
        out.append(
            f"| {name}{mark} | {r['threshold']} | {s.f3:.4f} | {s.precision:.4f} | {s.recall:.4f} "
            f"| {s.tp} | {s.fp} | {s.fn} | {z.f3:.4f} | {z.fp} | {z.fn} "
            f"| {r['replay_no_demographics'].f3:.4f} |"
        )
    return "\n".join(out)


def train(
    data: Path,
    out: Path,
    version: str,
    excluded: Sequence[str] = DEFAULT_EXCLUDED,
    log=print,
    recipe: Recipe = Recipe(),
) -> dict[str, Any]:
    """Cross-validates the `recipe`'s candidates, refits the chosen one on all rows and writes
    `out/model.json`."""
    import numpy as np
    import sklearn

    rows, skipped = read_cohort(data)
    if not rows:
        raise ValueError(f"{data}: no usable rows ({skipped} junk)")
    unknown = sorted(set(excluded) - set(FEATURES))
    if unknown:
        raise ValueError(f"--exclude: no such features {unknown}; known: {', '.join(FEATURES)}")
    if recipe.names is not None and set(recipe.names) - set(candidates()):
        raise ValueError(
            f"--candidates: no such candidates {sorted(set(recipe.names) - set(candidates()))}; "
            f"known: {', '.join(candidates())}"
        )
    cols = [i for i, name in enumerate(FEATURES) if name not in excluded]
    n_aki = sum(r.aki for r in rows)
    log(f"{data}: {len(rows)} rows ({n_aki} AKI), {skipped} junk rows skipped")
    unused = ", ".join(excluded) or "none"
    log(f"features given to the model: {len(cols)} of {len(FEATURES)}; not used: {unused}")
    live, augment, tolerance = recipe.live, recipe.augment, recipe.tolerance
    learn = "every result (earlier ones as negatives)" if live else "the labelled results"
    log(f"learning from {learn}" + (f", with {augment} assay-shifted copies" if augment else ""))
    log(f"{FOLDS}-fold cross-validation (out-of-fold F3 of the labelled results, and replayed):")
    ex = Examples.of(rows, len(rows))
    aug = Examples.of(assay_shifted(rows, augment), len(rows)) if augment else None
    stages = ex.P[:, FEATURES.index("nhs_stage")].astype(int).tolist()   # as nhs_points'
    table = cross_validate(rows, ex, aug, stages, cols, recipe, log)
    chosen = select(table)
    candidate, guard = table[chosen].get("candidate", chosen), table[chosen]["guard"]

    # The final fit: every row as in cross-validation.
    model = candidates()[candidate]().fit(
        *learning_set(ex, aug, np.arange(len(rows)), cols, live))
    parts = export(model, ex.P[ex.last], cols)
    threshold = table[chosen]["threshold"]
    reference = training_reference(rows, ex, stages, parts, threshold, guard)
    summary = {
        name: {
            "threshold": r["threshold"],
            "replayed_f3": round(r["replay"].f3, 6),
            "replayed_precision": round(r["replay"].precision, 6),
            "replayed_recall": round(r["replay"].recall, 6),
            "last_result_f3": round(r["last"].f3, 6),
        }
        for name, r in table.items()
    }
    doc = {
        "format": FORMAT,
        "version": version,
        "kind": f"{chosen}: P(AKI) = logistic(init [+ linear, clipped] + sum of tree leaves)",
        "feature_version": FEATURE_VERSION,
        "features": list(FEATURES),
        "unused_features": [f for f in FEATURES if f in excluded],
        "feature_probes": probe_vectors(),
        "threshold": threshold,
        **({"guardrail": {"nhs_min_stage": guard}} if guard is not None else {}),
        "training_data": {
            "file": data.name,
            "sha256": sha256_file(data),
            "rows": len(rows),
            "aki": n_aki,
            "junk_rows_skipped": skipped,
        },
        "trainer": {
            "candidate": chosen,
            "seed": SEED,
            "folds": FOLDS,
            "learns_from": "every result" if live else "labelled results",
            "assay_shifted_copies": augment,
            "threshold_tolerance": tolerance,
            "replay_repage_policy": policy_for("model").to_dict(),
            **(
                {"assay_shift": {"multiply": list(ASSAY_MUL), "add_umol_per_l": list(ASSAY_ADD)}}
                if augment
                else {}
            ),
            "scikit_learn": sklearn.__version__,
            "python": sys.version.split()[0],
        },
        "cv": summary,
        "reference": reference,
        **parts,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.json").write_text(artifact_json(doc), encoding="utf-8")
    report = (
        f"# Training report: model {version}\n\n"
        f"Data: `{data.name}` sha256 `{doc['training_data']['sha256']}`, {len(rows)} rows "
        f"({n_aki} AKI), {skipped} junk rows skipped.\n"
        f"Features not given to the model: {', '.join(doc['unused_features']) or 'none'}.\n"
        f"Learning from {learn}"
        + (f", with {augment} assay-shifted copies of every row (every result × "
           f"U{ASSAY_MUL} + U{ASSAY_ADD} µmol/L)" if augment else "")
        + ".\n\n"
        f"{FOLDS}-fold stratified cross-validation (seed {SEED}), out-of-fold scores. Models "
        f"learn from {learn} (the held-out rows are never shifted). A guardrail makes a result "
        f"positive whenever its NHS stage is at least the one named, whatever the score. "
        f"F3/precision/recall/TP/FP/FN: on each held-out row's last (labelled) result. "
        f"Replayed: every result of the held-out rows judged in order, "
        f"paged once per episode and re-paged as the service does (`repage.py`, the shipped "
        f"policy), scored as the hospital does (an early page is a FP and uses up the "
        f"episode unless a re-page follows). Thresholds and the candidate maximise the sum "
        f"of the two F3s"
        + (f" (the threshold: the lowest within {tolerance} of the best)" if tolerance else "")
        + ". "
        f"Chosen: `{chosen}`, threshold {doc['threshold']}.\n\n"
        f"{cv_markdown(table, chosen)}\n"
    )
    (out / "training-report.md").write_text(report, encoding="utf-8")
    log(f"chosen {chosen}, threshold {doc['threshold']}; wrote {out / 'model.json'}")
    return doc


# ---------------------------------------------------------------- evaluation


def model_scores(det, rows: Sequence[Row], demographics: bool = True) -> list[float]:
    """The served model's score of every result of every row, row after row, through the
    serving code (`ModelDetector`): its probability, or 1.0 where its NHS guardrail makes the
    result positive whatever the probability. `demographics=False` judges without age/sex."""
    out = []
    guard = det.guard_stage
    for r in rows:
        age, sex = (r.age, r.sex) if demographics else (None, None)
        for i in range(len(r.times)):
            ts, vs, t, v = r.times[:i], r.values[:i], r.times[i], r.values[i]
            p = det.probability(ts, vs, t, v, age, sex)
            if guard is not None and p < det.threshold and nhs_stage(ts, vs, t, v).stage >= guard:
                p = 1.0
            out.append(p)
    return out


def evaluate(
    model_path: Path | None, data: Path, report: Path | None, log=print
) -> dict[str, Scores]:
    """Scores the model (through the serving code) and the NHS algorithm on a labelled cohort:
    on each row's last result (the labelled point), and replayed over every result. Rows with
    an empty age or sex are judged without it; ValueError when no row is usable."""
    from .detect.model import load_model

    det = load_model(model_path)
    rows, skipped = read_cohort(data)
    if not rows:
        raise ValueError(
            f"{data}: no usable rows ({skipped} skipped as junk): nothing to score"
        )
    probs = model_scores(det, rows)
    probs0 = model_scores(det, rows, demographics=False)
    stages = nhs_points(rows)
    th = det.threshold
    guard = f", NHS stage >= {det.guard_stage} guardrail" if det.guard_stage else ""
    last = {
        f"model {det.version} (threshold {th}{guard})": last_scores(rows, probs, th),
        "model, age/sex withheld": last_scores(rows, probs0, th),
        "nhs (stage>=1)": last_scores(rows, stages, 1),
        "nhs hospital (stage>=2)": last_scores(rows, stages, 2),
    }
    model_repaging = Repaging(policy_for(det.name), stages)
    nhs_repaging = Repaging(policy_for("nhs"), stages)
    replayed = {
        f"model {det.version}": replay(rows, probs, th, model_repaging),
        "model, age/sex withheld": replay(rows, probs0, th, model_repaging),
        "model, without re-paging": replay(rows, probs, th),
        "nhs (stage>=1)": replay(rows, stages, 1, nhs_repaging),
        "nhs hospital (stage>=2)": replay(rows, stages, 2, nhs_repaging),
    }
    unknown = sum(r.age is None or r.sex is None for r in rows)
    log(
        f"{data}: {len(rows)} rows ({sum(r.aki for r in rows)} AKI), {skipped} junk rows skipped"
        + (f", {unknown} judged without an unknown age or sex" if unknown else "")
    )
    log("each row's last (labelled) result:")
    for name, s in last.items():
        log(f"  {name:34s} {s.line()}")
    log("every result judged in order, paged once per episode and re-paged as the service "
        "does (strict hospital scoring):")
    for name, s in replayed.items():
        log(f"  {name:34s} {s.line()}")
    if report is not None:
        write_report(report, det, data, rows, probs, last, replayed, model_repaging)
        log(f"report and plots in {report}")
    return last


def write_report(
    out: Path,
    det,
    data: Path,
    rows: Sequence[Row],
    probs: list[float],
    last: dict[str, Scores],
    replayed: dict[str, Scores],
    repaging: Repaging,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    out.mkdir(parents=True, exist_ok=True)
    ends = list(accumulate(len(r.times) for r in rows))
    labels = [r.aki for r in rows]
    final = [probs[e - 1] for e in ends]
    main, nhs1, nhs2 = (
        next(iter(last.values())),
        last["nhs (stage>=1)"],
        last["nhs hospital (stage>=2)"],
    )

    prec, rec, _ = precision_recall_curve(labels, final)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot(rec, prec, label=f"model {det.version}")
    ax.plot([main.recall], [main.precision], "o", label=f"model at threshold {det.threshold}")
    ax.plot([nhs1.recall], [nhs1.precision], "s", label="NHS (stage>=1)")
    ax.plot([nhs2.recall], [nhs2.precision], "^", label="NHS hospital (stage>=2)")
    ax.set(
        xlabel="recall",
        ylabel="precision",
        title=f"Precision-recall, last results of {data.name}",
        xlim=(0.75, 1.005),
        ylim=(0.75, 1.005),
    )
    ax.legend(loc="lower left")
    fig.savefig(out / "precision-recall.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(THRESHOLDS, [last_scores(rows, probs, t).f3 for t in THRESHOLDS], label="last result")
    ax.plot(
        THRESHOLDS, [replay(rows, probs, t, repaging).f3 for t in THRESHOLDS],
        label="every result, replayed"
    )
    ax.axvline(det.threshold, color="grey", ls="--", label=f"threshold {det.threshold}")
    ax.axhline(nhs1.f3, color="red", ls=":", label=f"NHS F3 {nhs1.f3:.4f}")
    ax.set(
        xlabel="threshold",
        ylabel="F3",
        title=f"F3 against threshold on {data.name}",
        ylim=(0.95, 1.0),
    )
    ax.legend(loc="lower center")
    fig.savefig(out / "f3-threshold.png", dpi=100)
    plt.close(fig)

    errors = [
        k for k, (r, p) in enumerate(zip(rows, final, strict=True)) if r.aki != (p >= det.threshold)
    ]
    fig, ax = plt.subplots(figsize=(7, 5))
    for k in errors[:20]:
        r = rows[k]
        days = [(t - r.times[-1]) / 86_400 for t in r.times]
        kind = "FN" if r.aki else "FP"
        who = f"age {r.age:g}" if r.age is not None else "age ?"
        ax.plot(days, r.values, "-o", ms=3, label=f"{kind} p={final[k]:.2f} {who} {r.sex or '?'}")
    ax.set(
        xlabel="days before the judged (last) result",
        ylabel="creatinine (µmol/L)",
        title=f"Trajectories of the model's {len(errors)} errors (first 20)",
    )
    if errors:
        ax.legend(fontsize=7)
    fig.savefig(out / "error-trajectories.png", dpi=100)
    plt.close(fig)

    def table(scores: dict[str, Scores]) -> list[str]:
        lines = [
            "| detector | F3 | precision | recall | TP | FP | FN | TN |",
            "|---|---|---|---|---|---|---|---|",
        ]
        return lines + [
            f"| {n} | {s.f3:.4f} | {s.precision:.4f} | {s.recall:.4f} | {s.tp} | {s.fp} | {s.fn} "
            f"| {s.tn} |"
            for n, s in scores.items()
        ]

    lines = [
        f"# Evaluation of model {det.version} on {data.name}",
        "",
        "## Each row's last (labelled) result",
        "",
        *table(last),
        "",
        "Confusion matrix of the model (rows: truth, columns: prediction):",
        "",
        "| | predicted AKI | predicted no AKI |",
        "|---|---|---|",
        f"| AKI | {main.tp} | {main.fn} |",
        f"| no AKI | {main.fp} | {main.tn} |",
        "",
        "## Every result judged in order, paged once per episode, re-paged as the service does",
        "",
        "TN here counts results (not rows) not paged.",
        "",
        *table(replayed),
        "",
        "![precision-recall](precision-recall.png)",
        "![F3 against threshold](f3-threshold.png)",
        "![errors](error-trajectories.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


# ---------------------------------------------------------------- commands


TRAINING_EXTRA = ("numpy", "sklearn", "matplotlib")


def missing_training_extra(command: str, modules: Sequence[str] = TRAINING_EXTRA) -> str | None:
    """The message for a command that needs the `train` extra when any of `modules` is not
    installed (a plain `pip install aki-alert`, the image: serving only), else None."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (f"aki-alert {command} needs the training extra ({', '.join(missing)} not "
            "installed): pip install 'aki-alert[train]'")


def _cmd_train(args) -> int:
    if (missing := missing_training_extra("train")) is not None:
        print(missing, file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        excluded = tuple(f.strip() for f in args.exclude.split(",") if f.strip())
        names = [n.strip() for n in args.candidates.split(",") if n.strip()] or None
        guards: list[int | None] = [None]
        for g in (g.strip() for g in args.guardrails.split(",") if g.strip()):
            if g not in ("1", "2", "3"):
                raise ValueError(f"--guardrails: {g!r} is not an NHS stage 1-3")
            guards.append(int(g))
        train(Path(args.data), out, args.version or out.name, excluded,
              recipe=Recipe(args.live, args.augment, names, guards, args.threshold_tolerance))
    except (OSError, ValueError) as e:
        print(f"aki-alert train: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_evaluate(args) -> int:
    from .detect.model import ModelLoadError

    # Scoring runs the serving code (pure Python); only the report's plots need the extra.
    if args.report and (missing := missing_training_extra("evaluate --report")) is not None:
        print(missing, file=sys.stderr)
        return 2
    model = Path(args.model) if args.model else None
    try:
        if args.shifts:
            from . import shifts

            data = Path(args.data)
            cohort = Path(args.cohort) if args.cohort else shifts.default_cohort(data)
            results = shifts.run(model, data, cohort)
            return 3 if args.check and any(r.misses() for r in results) else 0
        evaluate(model, Path(args.data), Path(args.report) if args.report else None)
    except (OSError, ValueError, ModelLoadError) as e:
        print(f"aki-alert evaluate: {e}", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    """Adds the `train` and `evaluate` subcommands."""
    p = sub.add_parser(
        "train",
        help="train the AKI model on a labelled cohort CSV",
        description="Cross-validates the NHS algorithm, a logistic regression and "
        "boosted trees; refits the best and writes MODEL_DIR/model.json.",
    )
    p.add_argument(
        "--data", required=True, help="labelled cohort CSV (age,sex,aki,creatinine_date_0,…)"
    )
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="artifact directory to write")
    p.add_argument("--version", help="model version (default: the name of MODEL_DIR)")
    p.add_argument(
        "--exclude",
        default=",".join(DEFAULT_EXCLUDED),
        metavar="NAMES",
        help="comma-separated features not given to the model (default: none), "
        "e.g. value,age,has_age for the drift-robust variant",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="learn from every result of each row, the earlier ones as negatives (a page there "
        "is a false positive in the hospital's scoring), not only from the labelled last result",
    )
    p.add_argument(
        "--augment",
        type=int,
        default=0,
        metavar="N",
        help="also learn from N synthetic assay-shifted copies of every row (every result "
        f"× U{ASSAY_MUL} + U{ASSAY_ADD} µmol/L, the label kept)",
    )
    p.add_argument(
        "--candidates",
        default="",
        metavar="NAMES",
        help="comma-separated candidates to cross-validate (default: all): "
        + ", ".join(candidates()),
    )
    p.add_argument(
        "--threshold-tolerance",
        type=float,
        default=0.0,
        metavar="T",
        help="choose the lowest threshold whose cross-validated objective (labelled F3 + "
        "replayed F3) is within T of the best, not the middle of the best plateau (default 0)",
    )
    p.add_argument(
        "--guardrails",
        default="",
        metavar="STAGES",
        help="NHS stages tried as a guardrail beside each candidate (positive whenever the "
        "NHS stage is at least it), e.g. 2,3; the best by cross-validation wins, none included",
    )
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser(
        "evaluate",
        help="score a model and the NHS algorithm on a labelled cohort",
        description="Prints F3, precision, recall and confusion counts of the model "
        "and of the NHS algorithm on the same rows; --report adds plots.",
    )
    p.add_argument(
        "--model", metavar="MODEL_DIR", help="artifact directory (default: the shipped model)"
    )
    p.add_argument("--data", required=True, help="labelled cohort CSV")
    p.add_argument("--report", metavar="DIR", help="write report.md and PNG plots here")
    p.add_argument(
        "--shifts",
        action="store_true",
        help="the shift table instead: model and NHS algorithm on the data as it is, the other "
        "cohort, assay changes, demographics withheld, older and younger populations",
    )
    p.add_argument(
        "--cohort",
        metavar="CSV",
        help="with --shifts: the other hospital's cohort (default: cohort-2025/test.csv beside "
        "--data, when present)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="with --shifts: exit 3 when a row misses its target",
    )
    p.set_defaults(func=_cmd_evaluate)
