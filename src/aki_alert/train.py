"""Offline training and evaluation of the AKI model (never imported by `serve`). Placeholder."""

from __future__ import annotations


def register(sub) -> None:
    """Registers `train` and `evaluate` (filled in by the model work)."""
