"""`aki-alert train` and `evaluate` end to end: a small synthetic cohort, and the shipped model
on the hospital's test cohort when ../shared/data is present."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from aki_alert import train as train_mod
from aki_alert.cli import main
from aki_alert.detect import Patient
from aki_alert.detect.model import default_model_path, load_model
from aki_alert.repage import policy_for
from aki_alert.timeutil import DAY, HOUR, format_csv_time

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def synthetic_cohort(path: Path, n: int, seed: int) -> None:
    """A ragged cohort CSV: stable patients, AKI rows whose last result jumps, junk rows."""
    rnd = random.Random(seed)
    width = 12
    header = ["age", "sex", "aki"] + [
        f"creatinine_{k}_{i}" for i in range(width) for k in ("date", "result")
    ]
    lines = [",".join(header)]
    for _ in range(n):
        aki = rnd.random() < 0.25
        k = rnd.randint(1, width)
        base = rnd.uniform(50, 130)
        t = 19_700 * DAY + rnd.randint(0, 100) * DAY
        cells = []
        for i in range(k):
            t += rnd.randint(6, 30 * 24) * HOUR
            last = i == k - 1
            v = base * (rnd.uniform(1.7, 3.0) if aki and last and k > 1 else rnd.uniform(0.9, 1.12))
            cells += [format_csv_time(t), f"{v:.2f}"]
        cells += [""] * (2 * width - len(cells))
        lines.append(
            ",".join(
                [str(rnd.randint(18, 95)), rnd.choice("mf"), "y" if aki and k > 1 else "n"] + cells
            )
        )
    lines.append("abc,m,n,2024-01-01 00:00:00,80")  # junk: age
    lines.append("40,x,n,2024-01-01 00:00:00,80")  # junk: sex
    lines.append("40,m,n,2024-01-01 00:00:00,-5")  # junk: absurd value
    lines.append("40,f,y,not a date,80")  # junk: date
    path.write_text("\r\n".join(lines) + "\r\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Trains twice (same seed, same data) on a small synthetic cohort with a reduced grid."""
    mp = pytest.MonkeyPatch()
    mp.setattr(train_mod, "GBT_GRID", ((20, 2, 0.2),))
    d = tmp_path_factory.mktemp("train")
    synthetic_cohort(d / "train.csv", 500, seed=1)
    synthetic_cohort(d / "test.csv", 300, seed=2)
    codes = [
        main(["train", "--data", str(d / "train.csv"), "--out", str(d / name)])
        for name in ("a", "b")
    ]
    mp.undo()
    assert codes == [0, 0]
    return d


def test_training_writes_a_loadable_fingerprinted_artifact(trained):
    doc = json.loads((trained / "a" / "model.json").read_text())
    assert (
        doc["training_data"]["sha256"]
        == hashlib.sha256((trained / "train.csv").read_bytes()).hexdigest()
    )
    assert doc["training_data"]["junk_rows_skipped"] == 4
    assert {
        "nhs (stage>=1)",
        "nhs hospital (stage>=2)",
        "logistic",
        "gbt-20x2-lr0.2",
        "logistic+gbt-20x2-lr0.2",
    } <= set(doc["cv"])
    det = load_model(trained / "a")
    assert det.version == "a" and det.training_sha256 == doc["training_data"]["sha256"]
    assert (trained / "a" / "training-report.md").read_text().count("(chosen)") == 1


def test_training_is_deterministic(trained):
    a = (trained / "a" / "model.json").read_text().replace('"version": "a"', "")
    b = (trained / "b" / "model.json").read_text().replace('"version": "b"', "")
    assert a == b


def test_evaluate_prints_model_and_nhs_scores_and_writes_plots(trained, capsys):
    report = trained / "report"
    code = main(
        [
            "evaluate",
            "--model",
            str(trained / "a"),
            "--data",
            str(trained / "test.csv"),
            "--report",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "model a" in out and "nhs (stage>=1)" in out and "4 junk rows skipped" in out
    model_f3 = float(out.split("model a")[1].split("F3 ")[1].split()[0])
    assert model_f3 > 0.95  # the synthetic signal is easy
    for png in ("precision-recall.png", "f3-threshold.png", "error-trajectories.png"):
        assert (report / png).read_bytes()[:4] == b"\x89PNG"
    assert "Confusion matrix" in (report / "report.md").read_text()


def test_evaluate_refuses_a_bad_model_with_a_message(tmp_path, capsys):
    (tmp_path / "model.json").write_text("{}")
    assert main(["evaluate", "--model", str(tmp_path), "--data", str(tmp_path / "x.csv")]) == 1
    assert "not an aki-alert-model" in capsys.readouterr().err


def test_shipped_model_is_small_and_fingerprints_the_hospital_training_file():
    path = default_model_path() / "model.json"
    assert path.stat().st_size <= 2 * 1024 * 1024
    if not (SHARED / "training.csv").exists():
        pytest.skip(f"hospital data not present at {SHARED}")
    digest = hashlib.sha256((SHARED / "training.csv").read_bytes()).hexdigest()
    assert load_model().training_sha256 == digest


def test_shipped_model_meets_the_acceptance_f3_on_the_test_cohort(capsys):
    if not (SHARED / "test.csv").exists():
        pytest.skip(f"hospital data not present at {SHARED}")
    assert main(["evaluate", "--data", str(SHARED / "test.csv")]) == 0
    out = capsys.readouterr().out
    labelled, replayed = out.split("every result judged in order")

    def f3(section: str) -> dict[str, float]:
        return {line.split("  F3")[0].strip(): float(line.split("F3 ")[1].split()[0])
                for line in section.splitlines() if "F3 " in line}

    at_label, live = f3(labelled), f3(replayed)
    model = next(v for k, v in at_label.items() if k.startswith("model v"))
    assert model >= 0.997
    assert model > at_label["nhs (stage>=1)"] and model > at_label["nhs hospital (stage>=2)"]
    # Live-style, every result in order, paged and re-paged as the service does (issue 18).
    assert next(v for k, v in live.items() if k.startswith("model v")) >= 0.997


def row(aki: bool, days: list[int]) -> train_mod.Row:
    return train_mod.Row(50.0, "F", aki, [d * DAY for d in days], [80.0] * len(days))


def test_replay_scores_pages_as_the_hospital_does():
    rows = [
        row(True, [0, 10, 20]),  # paged at the last result only: TP
        row(True, [0, 10, 20]),  # paged early: FP, and the episode swallows the AKI: FN
        row(False, [0, 50, 200]),  # two positives 200 days apart: two episodes, two FPs
        row(False, [0, 50]),  # two positives inside one episode: one FP
    ]
    scores = [0, 0, 1] + [0, 1, 1] + [1, 0, 1] + [1, 1]
    s = train_mod.replay(rows, scores, 0.5)
    assert (s.tp, s.fp, s.fn) == (1, 4, 1)
    assert s.tn == 11 - 1 - 4 - 1
    last = train_mod.last_scores(rows, scores, 0.5)
    assert (last.tp, last.fp, last.fn, last.tn) == (2, 2, 0, 0)


def test_replay_re_pages_as_the_service_does():
    """With the service's re-paging, an early moderate page no longer swallows a much worse
    injury later in its episode; a later result no worse than the page stays silent."""
    from aki_alert.repage import Policy

    worse = train_mod.Row(50.0, "F", True, [0, 2 * DAY, 9 * DAY], [80.0, 130.0, 400.0])
    same = train_mod.Row(50.0, "F", True, [0, 2 * DAY, 9 * DAY], [80.0, 130.0, 120.0])
    rows = [worse, same]
    scores = [0.0, 0.6, 0.9] + [0.0, 0.6, 0.55]
    stages = [0, 1, 3] + [0, 1, 1]
    plain = train_mod.replay(rows, scores, 0.5)
    assert (plain.tp, plain.fp, plain.fn) == (0, 2, 2)
    repaging = train_mod.Repaging(Policy(stage_gain=1), stages)
    s = train_mod.replay(rows, scores, 0.5, repaging)
    assert (s.tp, s.fp, s.fn) == (1, 2, 1)
    # A policy that never re-pages replays exactly as without one.
    assert train_mod.replay(rows, scores, 0.5, train_mod.Repaging(Policy(), stages)) == plain


@pytest.mark.parametrize(
    "record",
    [
        "50,m,n,2024-01-02 00:00:00,80,2024-01-01 00:00:00,90",  # out of time order
        "50,m,n,2024-01-01 00:00:00,",  # a date without a value
        "50,m,n,2024-01-01 00:00:00,nan",
        "50,m,maybe,2024-01-01 00:00:00,80",
        "50,m,n,,",  # no results
    ],
)
def test_junk_cohort_records_are_rejected(record):
    with pytest.raises(ValueError):
        train_mod.parse_row(record.split(","))


def test_padding_and_case_are_tolerated():
    r = train_mod.parse_row("7,F,Y,2024-01-01 00:00:00,80.5,,,2024-01-02 00:00:00,90,,".split(","))
    assert (r.age, r.sex, r.aki, r.values) == (7.0, "F", True, [80.5, 90.0])


def test_empty_age_or_sex_is_unknown_not_junk():
    r = train_mod.parse_row(",,y,2024-01-01 00:00:00,80,2024-01-02 00:00:00,200".split(","))
    assert (r.age, r.sex, r.aki) == (None, None, True)
    r = train_mod.parse_row("40,,n,2024-01-01 00:00:00,80".split(","))
    assert (r.age, r.sex) == (40.0, None)


def test_evaluate_judges_rows_without_age_or_sex(tmp_path, capsys):
    lines = ["age,sex,aki,creatinine_date_0,creatinine_result_0,creatinine_date_1,"
             "creatinine_result_1"]
    lines += [",,y,2024-01-01 00:00:00,70,2024-01-02 00:00:00,210"] * 3
    lines += ["55,,n,2024-01-01 00:00:00,70,2024-01-02 00:00:00,72"] * 3
    lines += [",f,n,2024-01-01 00:00:00,70,2024-02-02 00:00:00,71"] * 3
    (tmp_path / "c.csv").write_text("\n".join(lines) + "\n")
    assert main(["evaluate", "--data", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    assert "9 rows (3 AKI), 0 junk rows skipped, 9 judged without an unknown age or sex" in out
    model = next(line for line in out.splitlines() if line.strip().startswith("model "))
    assert "TP 3  FP 0  FN 0  TN 6" in model


def test_evaluate_fails_on_a_file_whose_rows_were_all_skipped(tmp_path, capsys):
    (tmp_path / "junk.csv").write_text(
        "age,sex,aki,creatinine_date_0,creatinine_result_0\n"
        "abc,m,n,2024-01-01 00:00:00,80\n40,m,n,2024-01-01 00:00:00,-5\n"
    )
    assert main(["evaluate", "--data", str(tmp_path / "junk.csv")]) == 1
    captured = capsys.readouterr()
    assert "no usable rows (2 skipped as junk)" in captured.err
    assert "F3" not in captured.out
    assert main(["evaluate", "--shifts", "--data", str(tmp_path / "junk.csv")]) == 1
    (tmp_path / "empty.csv").write_text("age,sex,aki,creatinine_date_0,creatinine_result_0\n")
    assert main(["evaluate", "--data", str(tmp_path / "empty.csv")]) == 1


def test_evaluate_shifts_prints_the_table(trained, capsys):
    code = main(["evaluate", "--shifts", "--model", str(trained / "a"),
                 "--data", str(trained / "test.csv"), "--cohort", str(trained / "train.csv")])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("| test |", "| cohort-2025 |", "assay ×1.15, newest result",
                 "assay +15 µmol/L, every result", "demographics withheld", "ages −15 years",
                 "subset aged ≥ 65"):
        assert name in out
    assert "targets met on" in out


def test_training_options_for_shift(tmp_path, monkeypatch):
    """--live, --augment, --guardrails, --threshold-tolerance and --candidates reach the
    artifact: a format-2 model with the drift reference, loadable and served."""
    monkeypatch.setattr(train_mod, "GBT_GRID", ((20, 2, 0.2),))
    synthetic_cohort(tmp_path / "train.csv", 300, seed=3)
    out = tmp_path / "m"
    code = main(["train", "--data", str(tmp_path / "train.csv"), "--out", str(out),
                 "--live", "--augment", "1", "--guardrails", "2,3",
                 "--threshold-tolerance", "0.001", "--candidates", "logistic,gbt-20x2-lr0.2",
                 "--exclude", "value,age,has_age"])
    assert code == 0
    doc = json.loads((out / "model.json").read_text())
    assert doc["format"] == "aki-alert-model/2" and doc["feature_version"] == "f2"
    assert doc["trainer"]["learns_from"] == "every result"
    assert doc["trainer"]["assay_shifted_copies"] == 1
    assert doc["trainer"]["threshold_tolerance"] == 0.001
    assert doc["trainer"]["replay_repage_policy"] == policy_for("model").to_dict()
    assert any("guardrail" in name for name in doc["cv"])
    assert set(doc["cv"]) - {"nhs (stage>=1)", "nhs hospital (stage>=2)"} <= {
        "logistic", "gbt-20x2-lr0.2", *(f"{c} + NHS stage>={k} guardrail"
                                        for c in ("logistic", "gbt-20x2-lr0.2") for k in (2, 3))}
    ref = doc["reference"]
    assert 0.0 < ref["positive_rate"] < 1.0
    assert abs(sum(ref["score"]["fractions"]) - 1.0) < 1e-4
    det = load_model(out)
    assert det.reference is not None
    assert det.guard_stage == doc.get("guardrail", {}).get("nhs_min_stage")
    report = (out / "training-report.md").read_text()
    assert "every result (earlier ones as negatives)" in report and "assay-shifted" in report


def test_training_refuses_unknown_candidates_and_guardrails(tmp_path, capsys):
    synthetic_cohort(tmp_path / "train.csv", 50, seed=4)
    args = ["train", "--data", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m")]
    assert main([*args, "--candidates", "forest"]) == 1
    assert "no such candidates ['forest']" in capsys.readouterr().err
    assert main([*args, "--guardrails", "4"]) == 1
    assert "not an NHS stage" in capsys.readouterr().err


def test_shipped_robust_model_holds_up_under_every_shift():
    """The drift switch (`v3-robust`) meets the shift targets on every shifted row of the
    model card's table (live-style ≥ 0.97, never below the NHS algorithm either way); on the
    unshifted test cohort it stays within 0.0005 of the 0.997 live-style target it misses."""
    from aki_alert import shifts
    from aki_alert.detect.model import MODELS_DIR

    cohort = SHARED / "cohort-2025" / "test.csv"
    if not (SHARED / "test.csv").exists() or not cohort.exists():
        pytest.skip(f"hospital data not present at {SHARED}")
    results = shifts.run(MODELS_DIR / "v3-robust", SHARED / "test.csv", cohort, log=lambda _: None)
    by_name = {r.name: r for r in results}
    assert len(by_name) == 11
    assert [r.name for r in results if r.misses()] == ["test"]
    assert by_name["test"].model_live.f3 >= 0.9965
    assert by_name["cohort-2025"].model_last.f3 > by_name["cohort-2025"].nhs_last.f3


def test_the_default_as_served_meets_every_shift_target():
    """Issue 18's acceptance: the service's default (v2, or the shift-robust model where the
    history shows another population) meets the targets on every row of the shift table."""
    from aki_alert import shifts

    cohort = SHARED / "cohort-2025" / "test.csv"
    if not (SHARED / "test.csv").exists() or not cohort.exists():
        pytest.skip(f"hospital data not present at {SHARED}")
    results = shifts.run(None, SHARED / "test.csv", cohort, log=lambda _: None)
    assert len(results) == 11 and not [r.name for r in results if r.misses()]
    served = {r.name: r.served for r in results}
    assert served["test"] == "v2" and served["cohort-2025"] == "v3-robust"


def test_a_chosen_guardrail_reaches_the_served_model(tmp_path, monkeypatch):
    """When cross-validation chooses a candidate with an NHS guardrail, the artifact carries it
    and the serving code applies it (a result at that stage is positive whatever the score)."""
    monkeypatch.setattr(train_mod, "GBT_GRID", ((20, 2, 0.2),))
    monkeypatch.setattr(train_mod, "select", lambda table: "logistic + NHS stage>=2 guardrail")
    synthetic_cohort(tmp_path / "train.csv", 300, seed=3)
    out = tmp_path / "m"
    assert main(["train", "--data", str(tmp_path / "train.csv"), "--out", str(out),
                 "--candidates", "logistic", "--guardrails", "2"]) == 0
    doc = json.loads((out / "model.json").read_text())
    assert doc["guardrail"] == {"nhs_min_stage": 2}
    det = load_model(out)
    assert det.guard_stage == 2
    jump = [train_mod.Row(50.0, "F", True, [0, DAY], [80.0, 200.0])]   # a ratio of 2.5
    assert train_mod.nhs_points(jump)[-1] == 2
    det.threshold = 1.01                 # no score is positive: only the guardrail can page
    assert train_mod.model_scores(det, jump)[-1] == 1.0
    assert det.judge(Patient("7", [0], [80.0]), DAY, 200.0).positive
