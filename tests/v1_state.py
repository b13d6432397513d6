"""A state as release v1 left it, holding data, on either backend: what the migration tests
start from. The current release cannot write a v1 state itself (its rows have v3 columns), so
the data is made by the current release in a scratch SQLite file and each v1 table's v1
columns are copied over."""

from __future__ import annotations

import os
import tempfile

from aki_alert.store.admin import data_tables
from aki_alert.store.sqlite import SqliteStore


def v1_columns() -> dict[str, list[str]]:
    """Each v1 table's columns, as a fresh v1 SQLite state has them."""
    with tempfile.TemporaryDirectory() as tmp:
        s = SqliteStore(os.path.join(tmp, "v1.db"), migrate=False)
        try:
            s.migrate(target=1)
            return {t: s.columns(t) for t in data_tables(1)}
        finally:
            s.close()


def copy_as_v1(store, fill) -> None:
    """Migrate `store` (opened with migrate=False) to v1 and load into it what `fill(scratch)`
    writes into a current state."""
    store.migrate(target=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "scratch.db")
        scratch = SqliteStore(path)
        fill(scratch)
        scratch.close()
        scratch = SqliteStore(path, readonly=True)
        try:
            with store.transaction():
                for table, cols in v1_columns().items():
                    marks = ", ".join("?" * len(cols))
                    for row in scratch.read_table(table, cols):
                        store.query(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})",
                                    *row)
                if hasattr(store, "_continue_identities"):    # PostgreSQL: ids after those copied
                    store._continue_identities()
        finally:
            scratch.close()
