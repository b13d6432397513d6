"""The served model: loading checks, the plain-Python evaluator, and judging."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aki_alert.detect import Patient
from aki_alert.detect.features import FEATURES, FEATURES_F1, features_f1
from aki_alert.detect.model import (
    MODELS_DIR,
    ModelLoadError,
    compile_model,
    default_model_path,
    load_model,
)
from aki_alert.detect.nhs import nhs_stage
from aki_alert.timeutil import DAY, HOUR

T = 20_000 * DAY
BIRTH = T - int(60 * 365.25 * DAY)


@pytest.fixture(scope="module")
def det():
    return load_model()


@pytest.fixture
def artifact(tmp_path) -> tuple[Path, dict]:
    """A writable copy of the shipped artifact and its parsed JSON."""
    d = tmp_path / "model"
    shutil.copytree(default_model_path(), d)
    return d, json.loads((d / "model.json").read_text())


def rewrite(d: Path, doc: dict) -> None:
    (d / "model.json").write_text(json.dumps(doc))


def test_shipped_model_loads_with_its_identity(det):
    assert det.name == "model"
    assert det.version == default_model_path().name
    assert 0.0 < det.threshold < 1.0
    assert len(det.training_sha256) == 64


def test_doubling_in_two_days_is_aki_and_a_stable_patient_is_not(det):
    p = Patient("1", [T - 30 * DAY, T - 2 * DAY], [80.0, 82.0], BIRTH, "F")
    pos = det.judge(p, T, 200.0)
    neg = det.judge(p, T, 84.0)
    assert pos.positive and pos.score >= pos.threshold and pos.detector == "model"
    assert not neg.positive and neg.score < 0.05
    assert pos.version == det.version


def test_explanation_fields_come_from_the_nhs_algorithm(det):
    p = Patient("1", [T - 3 * DAY], [70.0], BIRTH, "M")
    j = det.judge(p, T, 150.0)
    nhs = nhs_stage(p.times, p.values, T, 150.0)
    assert j.positive
    assert (j.stage, j.baseline, j.ratio) == (nhs.stage, nhs.baseline, nhs.ratio)
    # A negative explains no page: the NHS view is not computed for it.
    neg = det.judge(p, T, 72.0)
    assert not neg.positive and (neg.stage, neg.baseline, neg.ratio) == (None, None, None)


def test_results_at_or_after_time_are_ignored(det):
    base = Patient("1", [T - 5 * DAY], [70.0], BIRTH, "M")
    later = Patient("1", [T - 5 * DAY, T, T + HOUR], [70.0, 300.0, 400.0], BIRTH, "M")
    assert det.judge(base, T, 75.0) == det.judge(later, T, 75.0)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 400 * DAY), st.floats(1.0, 3000.0)), max_size=20),
    st.floats(1.0, 3000.0),
    st.none() | st.integers(-100 * 365 * DAY, 0),
    st.sampled_from([None, "M", "F"]),
)
def test_any_history_and_missing_demographics_give_a_probability(
    det, hist, value, birth_offset, sex
):
    hist.sort()
    p = Patient(
        "1",
        [T - d for d, _ in reversed(hist)],
        [v for _, v in reversed(hist)],
        None if birth_offset is None else T + birth_offset,
        sex,
    )
    j = det.judge(p, T, value)
    guarded = det.guard_stage is not None and (
        nhs_stage(p.times, p.values, T, value).stage >= det.guard_stage
    )
    assert 0.0 <= j.score <= 1.0 and j.positive == (j.score >= j.threshold or guarded)


def test_older_artifact_directory_can_be_loaded_by_path_for_rollback(artifact):
    d, doc = artifact
    doc["version"] = "v0-rollback"
    rewrite(d, doc)
    assert load_model(d).version == "v0-rollback"
    assert load_model(d / "model.json").version == "v0-rollback"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda doc: doc.update(feature_version="f0"), "feature version 'f0'"),
        (lambda doc: doc["features"].__setitem__(0, "creatinine"), "only in model ['creatinine']"),
        (lambda doc: doc["features"].reverse(), "different order"),
        (
            lambda doc: doc["feature_probes"][2].__setitem__(FEATURES.index("rise_48h"), 1.0),
            "'rise_48h'",
        ),
        (lambda doc: doc.pop("feature_probes"), "probes"),
        (lambda doc: doc["training_data"].pop("sha256"), "fingerprint"),
        (lambda doc: doc.update(threshold="__import__('os')"), "threshold"),
        (lambda doc: doc.update(threshold=1.5), "outside"),
        (lambda doc: doc.update(format="something-else"), "not an aki-alert-model"),
        (lambda doc: doc.update(linear=None, trees=[]), "neither"),
        (lambda doc: doc.update(guardrail={"nhs_min_stage": 4}), "guardrail"),
        (lambda doc: doc.update(guardrail=2), "guardrail"),
        (lambda doc: doc.update(reference=[]), "reference is not an object"),
        (lambda doc: doc.update(reference={"score": {}}), "no bounds"),
        (
            lambda doc: doc.update(
                reference={
                    "score": {"bounds": [0.5, 0.1], "fractions": [0.2, 0.3, 0.5]},
                    "creatinine": {"bounds": [80.0], "fractions": [0.5, 0.5]},
                    "positive_rate": 0.1,
                }
            ),
            "not ascending",
        ),
        (
            lambda doc: doc.update(
                reference={
                    "score": {"bounds": [0.5], "fractions": [0.5, 0.5]},
                    "creatinine": {"bounds": [80.0], "fractions": [0.9, 0.5]},
                    "positive_rate": 0.1,
                }
            ),
            "sum to 1",
        ),
        (
            lambda doc: doc.update(
                trees=[
                    {
                        "feature": [99, -1, -1],
                        "threshold": [1.0, 0, 0],
                        "left": [1, -1, -1],
                        "right": [2, -1, -1],
                        "value": [0, 0.1, 0.2],
                    }
                ]
            ),
            "out of range",
        ),
        (
            lambda doc: doc.update(
                trees=[
                    {"feature": [0], "threshold": [1.0], "left": [0], "right": [0], "value": [0]}
                ]
            ),
            "cycle",
        ),
    ],
)
def test_mismatched_or_malformed_artifacts_refuse_to_load(artifact, mutate, message):
    d, doc = artifact
    mutate(doc)
    rewrite(d, doc)
    with pytest.raises(ModelLoadError) as err:
        load_model(d)
    assert message in str(err.value)


def test_missing_and_unreadable_artifacts(tmp_path):
    with pytest.raises(ModelLoadError, match="no model"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(tmp_path)


def tree(feature, threshold, low, high):
    """A one-split tree: `low` when x[feature] <= threshold, else `high`."""
    return {
        "feature": [feature, -1, -1],
        "threshold": [threshold, 0.0, 0.0],
        "left": [1, -1, -1],
        "right": [2, -1, -1],
        "value": [0.0, low, high],
    }


def test_compiled_model_adds_init_linear_part_and_tree_leaves():
    n = len(FEATURES)
    w = [0.0] * n
    w[1] = 2.0
    raw = compile_model(
        0.5, {"weights": w, "clip": None}, [tree(0, 10.0, -1.0, 1.0), tree(2, 0.0, 3.0, 7.0)], n
    )
    x = [0.0] * n
    assert raw(x) == 0.5 - 1.0 + 3.0
    x[0], x[1], x[2] = 10.5, 1.0, 0.1
    assert raw(x) == 0.5 + 2.0 + 1.0 + 7.0
    x[0] = 10.0  # the threshold itself goes left, as in scikit-learn
    assert raw(x) == 0.5 + 2.0 - 1.0 + 7.0


def test_linear_part_is_clipped_before_the_trees():
    n = len(FEATURES)
    w = [0.0] * n
    w[0] = 1.0
    raw = compile_model(0.0, {"weights": w, "clip": 5.0}, [tree(0, 0.0, 0.0, 1.0)], n)
    x = [0.0] * n
    x[0] = 100.0
    assert raw(x) == 6.0
    x[0] = -100.0
    assert raw(x) == -5.0


def test_probability_is_stable_for_extreme_scores(det, monkeypatch):
    monkeypatch.setattr(det, "_raw", lambda x: 1e6)
    assert det.probability([], [], T, 90.0, None, None) == 1.0
    monkeypatch.setattr(det, "_raw", lambda x: -1e6)
    assert det.probability([], [], T, 90.0, None, None) == 0.0
    assert not math.isnan(det.probability([], [], T, 90.0, None, None))


def test_every_shipped_artifact_loads_so_each_can_be_rolled_back_to():
    shipped = [d for d in default_model_path().parent.iterdir() if (d / "model.json").exists()]
    assert len(shipped) >= 2
    for d in shipped:
        det = load_model(d)
        assert det.version == d.name
        assert det.judge(Patient("1", [T - DAY], [70.0], None, None), T, 210.0).positive


def test_v1_artifacts_of_the_f1_features_still_load_and_judge_as_before():
    """A model names its feature set: v1 (f1, 21 features) is served with f1's function after
    f2 became the training default; its probability is its own model on f1's vector."""
    v1 = load_model(MODELS_DIR / "v1")
    doc = json.loads((MODELS_DIR / "v1" / "model.json").read_text())
    assert doc["feature_version"] == "f1" and v1.guard_stage is None and v1.reference is None
    x = features_f1([T - 3 * DAY], [70.0], T, 150.0, 60.0, "M")
    raw = compile_model(doc["init"], doc["linear"], doc["trees"], len(FEATURES_F1))
    assert v1.probability([T - 3 * DAY], [70.0], T, 150.0, 60.0, "M") == pytest.approx(
        1 / (1 + math.exp(-raw(x)))
    )


def test_the_nhs_guardrail_pages_whatever_the_score(artifact, monkeypatch):
    d, doc = artifact
    doc["guardrail"] = {"nhs_min_stage": 2}
    rewrite(d, doc)
    det = load_model(d)
    assert det.guard_stage == 2
    monkeypatch.setattr(det, "_raw", lambda x: -50.0)  # the model says no to everything
    p = Patient("1", [T - 3 * DAY], [70.0], BIRTH, "M")
    stage2 = det.judge(p, T, 150.0)  # 150/70 > 2
    assert stage2.positive and stage2.score < det.threshold and stage2.stage == 2
    stage1 = det.judge(p, T, 110.0)
    assert not stage1.positive and stage1.stage is None


def test_the_drift_reference_is_loaded_with_the_model(artifact):
    d, doc = artifact
    doc["reference"] = {
        "score": {"bounds": [0.5], "fractions": [0.9, 0.1]},
        "creatinine": {"bounds": [80.0, 120.0], "fractions": [0.3, 0.5, 0.2]},
        "positive_rate": 0.03,
    }
    rewrite(d, doc)
    assert load_model(d).reference["positive_rate"] == 0.03
    doc.pop("reference")
    rewrite(d, doc)
    assert load_model(d).reference is None


@pytest.mark.parametrize("fmt", ["aki-alert-model/1", "aki-alert-model/2"])
def test_both_artifact_formats_load(artifact, fmt):
    d, doc = artifact
    doc["format"] = fmt
    rewrite(d, doc)
    assert load_model(d).version == doc["version"]
