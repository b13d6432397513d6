"""The built-in hospital's commands (filled in by the hospital work). Placeholder."""

from __future__ import annotations


def register(sub) -> None:
    """Registers `generate`, `simulate`, `score` and `demo`."""
