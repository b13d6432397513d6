"""A state on either backend, for the command tests (test_statecmd.py, test_replay.py): where
it is on the command line and how a test opens it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Location:
    backend: str                 # "sqlite" or "postgres"
    argv: list[str]              # --state-dir DIR or --state-url URL
    env: dict[str, str]          # the same as environment variables
    open: Callable               # a store on it: open(migrate=False, readonly=False)


def location(request, tmp_path) -> Location:
    """For a fixture parametrized with "sqlite" / "postgres" (PostgreSQL: a fresh database from
    the postgres_url fixture, skipped without a server)."""
    if request.param == "sqlite":
        from aki_alert.store.sqlite import SqliteStore

        d = tmp_path / "state"
        d.mkdir(exist_ok=True)
        path = os.path.join(d, "state.db")
        return Location("sqlite", ["--state-dir", str(d)], {"STATE_DIR": str(d)},
                        lambda **kw: SqliteStore(path, **kw))
    from aki_alert.store.postgres import PostgresStore

    url = request.getfixturevalue("postgres_url")
    return Location("postgres", ["--state-url", url], {"STATE_URL": url},
                    lambda **kw: PostgresStore(url, **kw))
