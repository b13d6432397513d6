"""Coverage-guided fuzzing of decode → parse → decide with atheris (`make fuzz`).

    .venv/bin/python tests/fuzz/fuzz_ingest.py -max_total_time=60 .fuzz/corpus tests/corpus

Seeded with the corpus (tests/corpus/*.hl7) and, written into the first corpus directory
when it is empty, each scenario of tests/corpus/expected.toml as one input (its messages
joined by 0x1C), so that corrections, withdrawals and merges are reached from the start.
Every input runs through harness.Harness with the default profile and the corpus's local one.
A crash, an assertion of the harness or a hang (-timeout) stops the run with the input saved
as an artifact: add it to tests/corpus as a regression case.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import tomllib
from pathlib import Path

import atheris

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

with atheris.instrument_imports(include=["aki_alert.hl7", "aki_alert.ingest", "aki_alert.mllp",
                                         "aki_alert.patientid", "aki_alert.timeutil",
                                         "aki_alert.episodes", "aki_alert.detect"]):
    import aki_alert.detect.nhs  # noqa: F401
    import aki_alert.hl7
    import aki_alert.ingest  # noqa: F401
    import aki_alert.mllp  # noqa: F401

from fuzz.harness import Harness  # noqa: E402

CORPUS = TESTS / "corpus"


def seed_scenarios(directory: Path) -> None:
    if not directory.is_dir() or any(directory.iterdir()):
        return
    manifest = tomllib.loads((CORPUS / "expected.toml").read_text("utf-8"))
    for s in manifest["scenario"]:
        data = b"\x1c".join((CORPUS / step["file"]).read_bytes() for step in s["steps"])
        (directory / f"scenario-{s['name']}").write_bytes(data)


def main() -> None:
    dirs = [a for a in sys.argv[1:] if not a.startswith("-")]
    if dirs:
        seed_scenarios(Path(dirs[0]))
    # The service logs a warning per dead letter and an exception per retried failure; the
    # harness's invariants say what matters, at a thousand inputs a second.
    logging.disable(logging.CRITICAL)
    state = tempfile.mkdtemp(prefix="aki-fuzz-")
    profiles = [aki_alert.hl7.DEFAULT_PROFILE,
                aki_alert.hl7.load_profile(str(CORPUS / "profiles" / "rvj-local.toml"))]
    harness = Harness(state, profiles)
    atheris.Setup(sys.argv, harness.run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
