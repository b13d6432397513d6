"""A plain `pip install aki-alert` (and the image) carries only what serving needs: numpy,
scikit-learn and matplotlib are the `train` extra's, and serving never imports them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aki_alert import cli, train

HEAVY = ("numpy", "sklearn", "matplotlib", "scipy", "pandas")
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_serving_never_imports_the_training_extra():
    """What `aki-alert serve` and its front load, and a result judged by the shipped model,
    in a fresh interpreter; with the extra made unimportable, so a lazy import would fail."""
    code = textwrap.dedent("""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {heavy!r}:
                    raise ImportError(f"{{name}} is the training extra's")

        sys.meta_path.insert(0, Block())
        from aki_alert import cli
        cli.build_parser()                       # every command's module, as `aki-alert` does
        import aki_alert.service, aki_alert.front, aki_alert.console.server  # noqa: E401
        from aki_alert.detect import Patient
        from aki_alert.detect.model import load_model
        from aki_alert.timeutil import DAY
        model = load_model()
        judged = model.judge(Patient("7", [0], [80.0], None, None), 2 * DAY, 200.0)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
        print(judged.positive, loaded)
    """).format(heavy=set(HEAVY))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("[]"), out.stdout


def test_the_training_extra_is_optional_in_pyproject():
    import tomllib

    project = tomllib.loads(PYPROJECT.read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower()
             for d in project["dependencies"]}
    assert not names & {"numpy", "scikit-learn", "matplotlib"}
    extra = {d.split(">")[0].strip().lower() for d in project["optional-dependencies"]["train"]}
    assert extra == {"numpy", "scikit-learn", "matplotlib"}


@pytest.fixture
def no_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in train.TRAINING_EXTRA else real(name, *a))


def test_train_without_the_extra_says_how_to_install_it(no_extra, tmp_path, capsys):
    assert cli.main(["train", "--data", str(tmp_path / "t.csv"), "--out",
                     str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "aki-alert train needs the training extra" in err
    assert "pip install 'aki-alert[train]'" in err
    assert not (tmp_path / "m").exists()


def test_evaluate_needs_the_extra_only_for_its_plots(no_extra, tmp_path, capsys):
    assert cli.main(["evaluate", "--data", str(tmp_path / "t.csv"), "--report",
                     str(tmp_path / "r")]) == 2
    assert "pip install 'aki-alert[train]'" in capsys.readouterr().err
    # Without --report it scores through the serving code: it gets as far as the data file.
    assert cli.main(["evaluate", "--data", str(tmp_path / "missing.csv")]) == 1
    assert "training extra" not in capsys.readouterr().err
