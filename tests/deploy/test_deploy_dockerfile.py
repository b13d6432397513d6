"""deploy/Dockerfile and .dockerignore: parsed with dockerfile-parse (no Docker engine here).

Checks what the image promises: pinned base, non-root user, the pinned install from the build
context, the settings' defaults, a HEALTHCHECK that works without curl (run here against the
real ops endpoint), the entry point, and that every file it COPYs is in the build context that
.dockerignore leaves.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

dockerfile_parse = pytest.importorskip(
    "dockerfile_parse", reason="dockerfile-parse is not installed (pip install dockerfile-parse)")

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@pytest.fixture(scope="module")
def parser():
    return dockerfile_parse.DockerfileParser(path=str(DOCKERFILE))


def stages(parser) -> list[list[dict]]:
    """The instructions of each stage, comments left out."""
    out: list[list[dict]] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if ins["instruction"] != "COMMENT" and out:
            out[-1].append(ins)
    return out


def final_stage(parser) -> list[dict]:
    return stages(parser)[-1]


def instructions(stage: list[dict], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def exec_form(value: str) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT/CMD/HEALTHCHECK CMD; shell form is not accepted."""
    try:
        argv = json.loads(value)
    except json.JSONDecodeError:
        pytest.fail(f"not in exec (JSON) form, so signals would go to /bin/sh: {value!r}")
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def healthcheck_argv(parser) -> list[str]:
    (value,) = instructions(final_stage(parser), "HEALTHCHECK")
    options, sep, command = value.partition("CMD")
    assert sep, f"HEALTHCHECK has no CMD: {value!r}"
    return exec_form(command.strip())


# --- base image, user, install --------------------------------------------------------------

def test_every_base_image_is_pinned(parser):
    images = parser.parent_images
    assert images, "no FROM"
    for image in images:
        if "@sha256:" in image:
            assert re.fullmatch(r"[\w./-]+(:[\w.-]+)?@sha256:[0-9a-f]{64}", image), image
            continue
        name, _, tag = image.rpartition(":")
        assert name and tag, f"{image}: no tag"
        # an exact version, never a moving tag such as latest, 3.11 or 3.11-slim
        assert re.fullmatch(r"\d+\.\d+\.\d+(-[\w.-]+)?", tag), f"{image}: tag {tag} is not exact"


def test_runtime_stage_runs_as_a_numeric_non_root_user(parser):
    users = instructions(final_stage(parser), "USER")
    assert users, "the runtime stage has no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # numeric, so Kubernetes' runAsNonRoot can check it without /etc/passwd
    assert user.isdigit() and int(user) >= 1000
    group = users[-1].partition(":")[2]
    assert group != "0" and group != "root"


def test_package_is_installed_from_the_context_with_the_constraints(parser):
    runs = [r for stage in stages(parser) for r in instructions(stage, "RUN")]
    installs = [r for r in runs if "pip install" in r]
    assert installs, "no pip install"
    words = shlex.split(installs[0].split("&&")[0])
    i = words.index("install")
    args = words[i + 1:]
    assert "-c" in args and args[args.index("-c") + 1] == "constraints.txt"
    assert "." in args, f"the package is not installed from the build context: {words}"
    # Serving only: the `train` extra (numpy, scikit-learn, matplotlib) stays out of the image.
    assert not any(a.startswith(".[") for a in args), f"an extra is installed: {words}"
    assert "-e" not in args and "--editable" not in args


def test_runtime_stage_carries_no_build_context_beyond_the_venv(parser):
    """The runtime stage copies only the installed venv from the build stage."""
    copies = instructions(final_stage(parser), "COPY") + instructions(final_stage(parser), "ADD")
    assert copies and all(c.startswith("--from=") for c in copies), copies


def test_environment_defaults_are_the_deployment_paths(parser):
    env = parser.envs  # the final stage's environment
    assert env["HISTORY_PATH"] == "/data/history.csv"
    assert env["STATE_DIR"] == "/state"
    assert env["METRICS_PORT"] == "8000"
    # the read-only root filesystem: no .pyc written at run time
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"


def test_environment_names_are_real_settings_or_python_ones(parser):
    from aki_alert.config import SETTINGS

    names = {s.env for s in SETTINGS}
    for key in parser.envs:
        assert key in names or key.startswith(("PYTHON", "PIP_")) or key == "PATH", key


def test_exposes_the_metrics_port(parser):
    assert instructions(final_stage(parser), "EXPOSE") == ["8000"]


# --- entry point and health check ----------------------------------------------------------

def test_entrypoint_is_exactly_aki_alert_serve(parser):
    stage = final_stage(parser)
    (entrypoint,) = instructions(stage, "ENTRYPOINT")
    assert exec_form(entrypoint) == ["aki-alert", "serve"]
    assert instructions(stage, "CMD") == [], "a CMD would add arguments to `aki-alert serve`"


def test_healthcheck_asks_healthz_with_the_standard_library(parser):
    (value,) = instructions(final_stage(parser), "HEALTHCHECK")
    argv = healthcheck_argv(parser)
    assert argv[:2] == ["python", "-c"]
    assert "/healthz" in argv[2] and "urllib.request" in argv[2]
    assert not re.search(r"\b(curl|wget)\b", value), "slim images have neither curl nor wget"
    timeout = re.search(r"--timeout=(\d+)s", value)
    assert timeout, "HEALTHCHECK has no --timeout"
    inner = re.search(r"timeout=(\d+(?:\.\d+)?)\)", argv[2])
    assert inner and float(inner.group(1)) < int(timeout.group(1)), \
        "the request must give up before Docker's health-check timeout"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_command_passes_against_the_real_ops_endpoint(parser):
    from aki_alert import health

    argv = healthcheck_argv(parser)
    port = _free_port()
    server = health.start(port, health.Readiness(), host="127.0.0.1")
    try:
        env = {**os.environ, "METRICS_PORT": str(port)}
        done = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True,
                              timeout=20)
        assert done.returncode == 0, done.stderr.decode()
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_command_fails_when_nothing_answers(parser):
    argv = healthcheck_argv(parser)
    env = {**os.environ, "METRICS_PORT": str(_free_port())}
    done = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=20)
    assert done.returncode != 0


# --- the build context ---------------------------------------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex on a relative path."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _ignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        patterns.append((keep, os.path.normpath(line.lstrip("!").strip()).lstrip("/")))
    return patterns


def _ignore_rules() -> list[tuple[bool, re.Pattern]]:
    return [(keep, _pattern_regex(p)) for keep, p in _ignore_patterns()]


def excluded(rel: str, rules) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for keep, rx in rules:
        if any(rx.match(p) for p in prefixes):
            result = not keep
    return result


def context_files() -> set[str]:
    rules = _ignore_rules()
    keeps = [p for keep, p in _ignore_patterns() if keep]
    files = set()
    for root, dirs, names in os.walk(REPO):
        # skip walking an excluded directory (.venv, .git …) unless a `!` pattern reaches inside
        rel_root = os.path.relpath(root, REPO)
        dirs[:] = [d for d in dirs
                   if not excluded(os.path.normpath(os.path.join(rel_root, d)), rules)
                   or any(k.startswith(os.path.normpath(os.path.join(rel_root, d)) + "/")
                          or k.startswith("**") for k in keeps)]
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), REPO)
            if not excluded(rel, rules):
                files.add(rel)
    return files


def test_dockerignore_matcher_follows_docker_semantics():
    rules = [(False, _pattern_regex("*")), (True, _pattern_regex("src")),
             (False, _pattern_regex("**/__pycache__"))]
    assert excluded("tests/unit/test_hl7.py", rules)
    assert not excluded("src/aki_alert/cli.py", rules)
    assert excluded("src/aki_alert/__pycache__/cli.cpython-311.pyc", rules)


def test_every_copied_file_is_in_the_build_context(parser):
    context = context_files()
    for stage in stages(parser):
        for value in instructions(stage, "COPY") + instructions(stage, "ADD"):
            words = [w for w in shlex.split(value) if not w.startswith("--")]
            if value.startswith("--from="):
                continue  # from another stage, not from the context
            *sources, _dest = words
            assert sources, value
            for src in sources:
                path = REPO / src
                assert path.exists(), f"COPY {src}: not in the repository"
                if path.is_file():
                    assert src in context, f"COPY {src}: left out by .dockerignore"
                else:
                    inside = [f for f in context if f.startswith(src.rstrip("/") + "/")]
                    assert inside, f"COPY {src}: everything in it is left out by .dockerignore"


def test_build_context_has_the_package_and_its_model_and_nothing_local():
    context = context_files()
    # pip install . needs these; the package data (the shipped model) must come along
    for needed in ("pyproject.toml", "README.md", "constraints.txt",
                   "src/aki_alert/__init__.py", "src/aki_alert/models/DEFAULT"):
        assert needed in context, needed
    model = (REPO / "src/aki_alert/models/DEFAULT").read_text().strip()
    assert any(f.startswith(f"src/aki_alert/models/{model}/") for f in context)
    # never a developer's state, environment, caches or the hospital's data
    for f in context:
        assert not f.startswith((".venv/", ".git/", "tests/", ".hypothesis/", "out/")), f
        assert "__pycache__" not in f and not f.endswith((".pyc", ".db", ".db-wal", ".db-shm")), f
