"""Which hospital the state belongs to, and what to do when the configuration says another.

The incident behind this project: a redeployment kept the state of another environment, so the
new history file was never loaded and new patients were judged against no history, or another
patient's. At every start the state's recorded provenance (history file fingerprint,
environment) is compared with the configuration, and a mismatch is handled by a policy:

- `auto` (default): a history file that agrees with the state's wherever they overlap, and
  covers most of it, is the same hospital's newer export: merged. Anything else means the state
  belongs to another environment: it is archived and the state rebuilt from the new history.
  This keeps alerting running with the right patients, which is what protects patients;
  refusing to start would silence every alert until someone intervenes.
- `refuse`: exit, saying what differs and how to resolve it.
- `merge`: import the new history into the existing state, keeping live results.
- `rebuild`: archive the old state with a timestamp and start fresh from the new history.
"""

from __future__ import annotations

from dataclasses import dataclass

POLICIES = ("auto", "refuse", "merge", "rebuild")

# Share of the state's history results a new file must also contain to count as the same
# hospital's newer export (a 90-day window moves, so old rows drop off the front).
SAME_HOSPITAL_OVERLAP = 0.5


@dataclass(frozen=True, slots=True)
class Overlap:
    """How a new history file relates to the history already in the state."""

    state_rows: int    # history results in the state
    shared: int        # results in both, same patient, time and value
    conflicts: int     # same patient and time, different value

    @property
    def same_hospital(self) -> bool:
        if self.state_rows == 0:
            return True
        return self.conflicts == 0 and self.shared >= SAME_HOSPITAL_OVERLAP * self.state_rows


@dataclass(frozen=True, slots=True)
class Decision:
    action: str        # "keep" | "import" | "merge" | "rebuild" | "refuse"
    mismatch: bool     # the state was built from something other than the configuration
    reason: str


def decide(policy: str, recorded_history: str | None, history: str | None,
           recorded_env: str | None, env: str, overlap: Overlap | None) -> Decision:
    """What to do at start. `history` is the configured file's fingerprint (None: unreadable);
    `overlap` is given when the fingerprints differ and both exist."""
    env_differs = recorded_env is not None and recorded_env != env
    if history is None:
        return Decision("keep", env_differs, "configured history file is not readable")
    if recorded_history is None:
        if env_differs:
            return _mismatch(policy, f"state built for environment {recorded_env!r}, "
                                     f"configured {env!r}", overlap)
        return Decision("import", False, "history not imported yet")
    if recorded_history == history:
        if env_differs:
            # Same history file: the same hospital under a new name or address.
            return Decision("keep", True, f"environment renamed from {recorded_env!r} to {env!r}"
                                          " with the same history file")
        return Decision("keep", False, "history already imported")
    what = (f"history file changed (state built from sha256 {recorded_history[:12]}, "
            f"configured {history[:12]})")
    if env_differs:
        what += f" and environment changed from {recorded_env!r} to {env!r}"
    return _mismatch(policy, what, overlap)


def _mismatch(policy: str, what: str, overlap: Overlap | None) -> Decision:
    if policy == "auto":
        if overlap is not None and overlap.same_hospital:
            detail = (f"{overlap.shared} of {overlap.state_rows} known history results "
                      "agree" if overlap.state_rows else "no history in the state yet")
            return Decision("merge", False, f"{what}; same hospital ({detail}): merging")
        detail = (f"{overlap.shared} of {overlap.state_rows} known history results shared, "
                  f"{overlap.conflicts} conflicting" if overlap else "no comparison possible")
        return Decision("rebuild", True, f"{what}; another hospital's state ({detail}): "
                                         "archiving it and rebuilding from the new history")
    if policy == "refuse":
        return Decision("refuse", True, what)
    return Decision(policy, True, f"{what}: {policy} as configured")
