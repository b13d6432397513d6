"""The learned AKI detector (logistic regression and/or boosted trees), served in plain Python.

Why this representation: the service judges every result on its hot path and must not import
numpy/scikit-learn there (start-up time, memory, and a per-call overhead on one row that alone
exceeds the whole budget). Training exports the model as plain JSON (`model.json`: an
intercept, optional linear weights, optional trees as node arrays); at load we check the
artifact against the feature code, then generate one straight-line Python function (a weighted
sum, then nested `if x3 <= t:` tests) from the JSON numbers and compile it once. A prediction
is then a few hundred float operations with no loop, no attribute look-up and no allocation:
measured, 100 depth-3 trees take ~3.3 µs, against ~11 µs walking the same node arrays in a
Python loop (and ~220 µs for scikit-learn's predict_proba on one row). Only numbers validated
as such reach the generated source.

An artifact directory holds `model.json`. The shipped ones live in `aki_alert/models/<version>/`
and `aki_alert/models/DEFAULT` names the one loaded when no path is given; pointing MODEL_PATH
at an older directory rolls back.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from ..timeutil import DAY, age_years
from . import Judgement, Patient
from .features import FEATURE_SETS, features
from .nhs import nhs_stage

# /2 adds the optional `guardrail` (NHS stage that is positive whatever the score) and
# `reference` (the training distributions the service's drift metrics compare against).
FORMAT = "aki-alert-model/2"
FORMATS = ("aki-alert-model/1", FORMAT)
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
_SHA256 = re.compile(r"[0-9a-f]{64}")

# Fixed inputs whose feature vectors are stored in each artifact at training time: if the feature
# code has changed meaning since, the recomputed vectors differ and the model refuses to load.
PROBES: tuple[dict[str, Any], ...] = (
    {"times": [], "values": [], "time": 1000 * DAY, "value": 90.0, "age": None, "sex": None},
    {
        "times": [900 * DAY],
        "values": [80.0],
        "time": 1000 * DAY,
        "value": 130.0,
        "age": 71.5,
        "sex": "F",
    },
    {
        "times": [990 * DAY, 998 * DAY, 999 * DAY + 3600, 1000 * DAY - 60],
        "values": [70.0, 75.0, 72.0, 90.0],
        "time": 1000 * DAY,
        "value": 140.0,
        "age": 40.0,
        "sex": "M",
    },
    {
        "times": [500 * DAY, 640 * DAY, 700 * DAY, 800 * DAY, 1000 * DAY, 1001 * DAY],
        "values": [100.0, 110.0, 95.0, 105.0, 500.0, 600.0],
        "time": 1000 * DAY,
        "value": 250.0,
        "age": 0.5,
        "sex": "f",
    },
)


class ModelLoadError(Exception):
    """The artifact cannot be served: missing, malformed, or built for other feature code."""


def probe_vectors(fn: Callable[..., list[float]] = features) -> list[list[float]]:
    """Feature vectors of PROBES under a feature function (by default the current one, whose
    vectors training stores)."""
    return [fn(p["times"], p["values"], p["time"], p["value"], p["age"], p["sex"]) for p in PROBES]


def _num(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ModelLoadError(f"{what} is not a finite number: {x!r}")
    return float(x)


def _emit(tree: dict[str, Any], k: int, n_features: int) -> list[str]:
    """Source lines (nested if/else adding the leaf value to `s`) of one exported tree."""
    try:
        feat, thr = tree["feature"], tree["threshold"]
        left, right, value = tree["left"], tree["right"], tree["value"]
    except (KeyError, TypeError) as e:
        raise ModelLoadError(f"tree {k} lacks {e}") from None
    if not all(isinstance(a, list) for a in (feat, thr, left, right, value)):
        raise ModelLoadError(f"tree {k}: node arrays are not lists")
    n = len(value)
    if not n or any(len(a) != n for a in (feat, thr, left, right)):
        raise ModelLoadError(f"tree {k}: node arrays of different lengths")
    lines: list[str] = []

    def walk(node: Any, ind: int) -> None:
        pad = "    " * ind
        if not (isinstance(node, int) and 0 <= node < n) or ind > 32:
            raise ModelLoadError(f"tree {k}: bad child index or cycle at node {node!r}")
        if left[node] == -1:
            lines.append(f"{pad}s += {_num(value[node], f'tree {k} leaf {node}')!r}")
            return
        f = feat[node]
        if not (isinstance(f, int) and not isinstance(f, bool) and 0 <= f < n_features):
            raise ModelLoadError(f"tree {k} node {node}: feature index {f!r} out of range")
        lines.append(f"{pad}if x{f} <= {_num(thr[node], f'tree {k} node {node} threshold')!r}:")
        walk(left[node], ind + 1)
        lines.append(f"{pad}else:")
        walk(right[node], ind + 1)

    walk(0, 1)
    return lines


def compile_model(
    init: float, linear: dict[str, Any] | None, trees: list[dict[str, Any]], n_features: int
) -> Callable[[list[float]], float]:
    """A function from a feature vector to the model's raw score (log-odds).

    raw = init [+ weights . x, clipped to ±clip] + sum of the trees' leaves: a logistic
    regression, boosted trees, or trees boosted from a logistic regression.
    """
    body = [f"    s = {_num(init, 'init')!r}"]
    if linear is not None:
        weights = linear.get("weights") if isinstance(linear, dict) else None
        if not isinstance(weights, list) or len(weights) != n_features:
            raise ModelLoadError(f"linear part needs {n_features} weights")
        for i, w in enumerate(weights):
            if _num(w, f"weight {i}") != 0.0:
                body.append(f"    s += {float(w)!r} * x{i}")
        if linear.get("clip") is not None:
            c = _num(linear["clip"], "clip")
            body.append(f"    s = {c!r} if s > {c!r} else {-c!r} if s < {-c!r} else s")
    elif not trees:
        raise ModelLoadError("model has neither a linear part nor trees")
    for k, tree in enumerate(trees):
        body += _emit(tree, k, n_features)
    unpack = ", ".join(f"x{i}" for i in range(n_features))
    src = f"def raw(x):\n    {unpack}, = x\n" + "\n".join(body) + "\n    return s\n"
    namespace: dict[str, Any] = {}
    exec(compile(src, "<aki-alert model>", "exec"), namespace)  # noqa: S102 - numbers only, validated
    return namespace["raw"]


def _check_features(doc: dict[str, Any]) -> tuple[tuple[str, ...], Callable[..., list[float]]]:
    """The feature names and function the artifact was trained with; ModelLoadError naming
    what differs between the artifact and the feature code."""
    version = doc.get("feature_version")
    if not isinstance(version, str) or version not in FEATURE_SETS:
        raise ModelLoadError(
            f"model built for feature version {version!r}, this code computes "
            f"{', '.join(map(repr, FEATURE_SETS))}: retrain or load a matching model"
        )
    code_names, fn = FEATURE_SETS[version]
    names = doc.get("features")
    if not isinstance(names, list) or tuple(names) != code_names:
        names = names if isinstance(names, list) else []
        extra = [f for f in names if f not in code_names]
        missing = [f for f in code_names if f not in names]
        order = "" if extra or missing else " (same names, different order)"
        raise ModelLoadError(
            f"model feature list differs from the code{order}: "
            f"only in model {extra}, only in code {missing}"
        )
    stored = doc.get("feature_probes")
    if not isinstance(stored, list) or len(stored) != len(PROBES):
        raise ModelLoadError("model lacks the feature probes needed to check the feature code")
    for i, (want, got) in enumerate(zip(stored, probe_vectors(fn), strict=True)):
        if not isinstance(want, list) or len(want) != len(got):
            raise ModelLoadError(f"feature probe {i} has the wrong length")
        for name, w, g in zip(code_names, want, got, strict=True):
            if not isinstance(w, (int, float)) or not abs(w - g) <= 1e-9 * max(1.0, abs(g)):
                raise ModelLoadError(
                    f"feature {name!r} is computed differently from when the model was trained "
                    f"(probe {i}: model {w!r}, code {g!r}): retrain or load a matching model"
                )
    return code_names, fn


def _read(path: Path) -> dict[str, Any]:
    file = path / "model.json" if path.is_dir() else path
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"no model at {file}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read model {file}: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") not in FORMATS:
        raise ModelLoadError(f"{file} is not an aki-alert-model artifact ({' or '.join(FORMATS)})")
    return doc


def default_model_path() -> Path:
    """The shipped model named by `models/DEFAULT`."""
    try:
        return MODELS_DIR / (MODELS_DIR / "DEFAULT").read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ModelLoadError(f"no default model: {e}") from None


def load_model(path: str | Path | None = None) -> "ModelDetector":
    """Loads and checks an artifact (a directory holding model.json, or the file itself).

    None loads the shipped default. Raises ModelLoadError with the reason when the artifact is
    missing, malformed, or does not match this feature code.
    """
    doc = _read(Path(path) if path is not None else default_model_path())
    version = doc.get("version")
    if not isinstance(version, str) or not version:
        raise ModelLoadError("model has no version")
    sha = (
        doc.get("training_data", {}).get("sha256")
        if isinstance(doc.get("training_data"), dict)
        else None
    )
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise ModelLoadError(f"model {version} has no training data fingerprint (sha256)")
    names, fn = _check_features(doc)
    threshold = _num(doc.get("threshold"), "threshold")
    if not 0.0 < threshold < 1.0:
        raise ModelLoadError(f"model {version}: threshold {threshold} outside (0, 1)")
    trees = doc.get("trees", [])
    if not isinstance(trees, list):
        raise ModelLoadError(f"model {version}: trees is not a list")
    raw = compile_model(doc.get("init"), doc.get("linear"), trees, len(names))
    guard = doc.get("guardrail")
    stage = None
    if guard is not None:
        stage = guard.get("nhs_min_stage") if isinstance(guard, dict) else None
        if stage not in (1, 2, 3) or isinstance(stage, bool):
            raise ModelLoadError(f"model {version}: guardrail nhs_min_stage {stage!r} not 1-3")
    reference = doc.get("reference")
    if reference is not None:
        reference = check_reference(reference, version)
    return ModelDetector(version, threshold, raw, sha, fn, stage, reference)


def check_reference(ref: Any, version: str) -> dict[str, Any]:
    """The artifact's training distributions (`reference`), checked: for each of "score" and
    "creatinine", ascending `bounds` and one more `fractions` than bounds, summing to 1; the
    expected `positive_rate` in [0, 1]."""
    if not isinstance(ref, dict):
        raise ModelLoadError(f"model {version}: reference is not an object")
    for key in ("score", "creatinine"):
        h = ref.get(key)
        if not isinstance(h, dict):
            raise ModelLoadError(f"model {version}: reference lacks the {key} histogram")
        bounds, fractions = h.get("bounds"), h.get("fractions")
        if not isinstance(bounds, list) or not isinstance(fractions, list) or not bounds:
            raise ModelLoadError(f"model {version}: reference {key}: no bounds or fractions")
        b = [_num(x, f"reference {key} bound") for x in bounds]
        f = [_num(x, f"reference {key} fraction") for x in fractions]
        if any(x >= y for x, y in zip(b, b[1:], strict=False)) or len(f) != len(b) + 1:
            raise ModelLoadError(f"model {version}: reference {key}: bounds not ascending or "
                                 "fractions not one more than bounds")
        if any(x < 0 for x in f) or abs(sum(f) - 1.0) > 1e-4:
            raise ModelLoadError(f"model {version}: reference {key}: fractions do not sum to 1")
    rate = _num(ref.get("positive_rate"), "reference positive_rate")
    if not 0.0 <= rate <= 1.0:
        raise ModelLoadError(f"model {version}: reference positive_rate {rate} outside [0, 1]")
    return ref


class ModelDetector:
    """Judges a result by the model's probability of AKI against the threshold chosen for F3."""

    name = "model"

    def __init__(
        self,
        version: str,
        threshold: float,
        raw: Callable[[list[float]], float],
        training_sha256: str,
        features: Callable[..., list[float]] = features,
        guard_stage: int | None = None,
        reference: dict[str, Any] | None = None,
    ) -> None:
        self.version = version
        self.threshold = threshold
        self.training_sha256 = training_sha256
        self.guard_stage = guard_stage  # an NHS stage at or above it is positive whatever p
        self.reference = reference  # training distributions for the drift metrics, or None
        self._raw = raw
        self._features = features

    def probability(
        self,
        times: Sequence[int],
        values: Sequence[float],
        time: int,
        value: float,
        age: float | None,
        sex: str | None,
    ) -> float:
        """P(AKI) of a result at `time` given the earlier results and demographics."""
        z = self._raw(self._features(times, values, time, value, age, sex))
        # Numerically safe logistic: exp of a large positive number would overflow.
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def judge(self, patient: Patient, time: int, value: float) -> Judgement:
        age = age_years(patient.birth, time) if patient.birth is not None else None
        p = self.probability(patient.times, patient.values, time, value, age, patient.sex)
        positive = p >= self.threshold
        # The NHS view explains a page; computing it for every result cost a quarter of judge.
        # With a guardrail it is needed for every result (a stage at or above it pages).
        nhs = None
        if positive or self.guard_stage is not None:
            nhs = nhs_stage(patient.times, patient.values, time, value)
            if not positive and nhs.stage >= self.guard_stage:
                positive = True
            elif not positive:
                nhs = None
        return Judgement(
            positive=positive,
            score=p,
            threshold=self.threshold,
            detector=self.name,
            version=self.version,
            stage=nhs.stage if nhs else None,
            baseline=nhs.baseline if nhs else None,
            ratio=nhs.ratio if nhs else None,
        )
