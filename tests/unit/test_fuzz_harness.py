"""The fuzz target's harness (tests/fuzz/harness.py), without atheris: every corpus message,
each scenario as one input, and the crashes the fuzzer found, hold its invariants."""

import tomllib
from pathlib import Path

import pytest

from aki_alert import hl7
from aki_alert.hl7 import acknowledgement
from aki_alert.mllp import frame
from fuzz.harness import Harness

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
MANIFEST = tomllib.loads((CORPUS / "expected.toml").read_text("utf-8"))


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    local = hl7.load_profile(str(CORPUS / "profiles" / "rvj-local.toml"))
    h = Harness(str(tmp_path_factory.mktemp("fuzz")), [hl7.DEFAULT_PROFILE, local])
    yield h
    h.close()


def test_every_corpus_message_holds_the_invariants(harness):
    for path in sorted(CORPUS.glob("*.hl7")):
        harness.run(path.read_bytes())
        harness.run(frame(path.read_bytes()))


@pytest.mark.parametrize("scenario", MANIFEST["scenario"], ids=lambda s: s["name"])
def test_scenarios_as_one_input(harness, scenario):
    msgs = [(CORPUS / step["file"]).read_bytes() for step in scenario["steps"]]
    harness.run(b"\x1c".join(msgs))
    harness.run(b"".join(frame(m) for m in msgs))


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "fuzz"
                                         / "regressions").iterdir()), ids=lambda p: p.name)
def test_inputs_the_fuzzer_found(harness, path):
    harness.run(path.read_bytes())


def test_the_ack_echoes_no_control_character():
    raw = (CORPUS / "control-id-with-control-chars.hl7").read_bytes()
    assert b"\rMSA|AA|WP240315101500\r" in acknowledgement(raw)


def test_oversized_frames_and_junk(harness):
    harness.run(b"junk" + frame(b"MSH|" + b"x" * 10_000) + frame(b""))
    harness.run(b"\x0b\x0b\x1c\r\x1c")
