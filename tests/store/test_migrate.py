"""Schema migrations, the same on both backends (see conftest.py): a v1 state holding data is
brought to this release's schema in one transaction, with its data intact."""

from __future__ import annotations

import pytest

from aki_alert.detect.nhs import NhsDetector
from aki_alert.hospital import messages
from aki_alert.ingest import Ingest
from aki_alert.store import NewerSchemaError, StateError
from aki_alert.store.admin import SCHEMA_VERSION, plan
from aki_alert.timeutil import DAY, HOUR, parse_hl7_date, parse_hl7_time
from v1_state import copy_as_v1, v1_columns

T0 = parse_hl7_time("20240301080000")
PAGES_SINCE = ("SELECT mrn, result_time FROM outbox WHERE status != 'suppressed' "
               "AND result_time >= ?")


def build_v1(backend):
    """A state as release v1 built it: a history, an admission, an AKI page, a dead letter."""
    def fill(scratch):
        scratch.import_results([("8", T0 - 30 * DAY, 80.0)])
        ing = Ingest(scratch, NhsDetector())
        ing.apply(messages.admission(T0 - DAY, "7", "ANN SMITH", parse_hl7_date("19600101"),
                                     "F"), 0.0)
        ing.apply(messages.result(T0, "7", 100.0), 0.0)
        ing.apply(messages.result(T0 + DAY, "7", 250.0), 0.0)
        ing.apply(b"garbage", 0.0)

    opened = _open_unmigrated(backend)
    copy_as_v1(opened, fill)
    return opened


def _open_unmigrated(backend):
    if backend.name == "sqlite":
        from aki_alert.store.sqlite import SqliteStore
        store = SqliteStore(backend.path, migrate=False)
    else:
        from aki_alert.store.postgres import PostgresStore
        store = PostgresStore(backend.url, migrate=False)
    backend.opened.append(store)
    return store


def snapshot(store) -> dict:
    """Every row of the v1 tables, in their v1 columns."""
    return {t: sorted(tuple(r) for r in store.query(f"SELECT {', '.join(cols)} FROM {t}"
                                                    ).fetchall())
            for t, cols in v1_columns().items()}


def test_a_v1_state_is_migrated_with_its_data_intact(backend):
    store = build_v1(backend)
    before = snapshot(store)
    assert store.schema_version() == 1 and "outbox_result_time" not in store.tables()

    dry = store.migrate(dry_run=True)
    assert (dry.current, dry.target, dry.steps) == (1, SCHEMA_VERSION, [2, 3])
    assert store.schema_version() == 1 and "outbox_result_time" not in store.tables()

    done = store.migrate()
    assert (done.current, done.target, done.steps) == (1, SCHEMA_VERSION, [2, 3])
    assert store.schema_version() == SCHEMA_VERSION and "outbox_result_time" in store.tables()
    assert snapshot(store) == before
    store.close()

    again = backend.open()                 # the service opens it: nothing left to do
    assert again.migrate().steps == [] and snapshot(again) == before
    assert again.pending_pages()[0].body.startswith("7,")
    # The per-message path goes on where it was.
    ing = Ingest(again, NhsDetector())
    ing.apply(messages.result(T0 + 2 * DAY, "8", 90.0), 0.0)
    assert again.counts()["messages"] == 5


def test_a_failed_migration_leaves_the_state_at_its_version(backend):
    store = build_v1(backend)
    # An object already named like the index makes step 2 fail.
    with store.transaction():
        store.query("CREATE INDEX outbox_result_time ON journal (received_at)")
    with pytest.raises(StateError, match="cannot migrate"):
        store.migrate()
    assert store.schema_version() == 1
    assert store.counts()["messages"] == 4


def test_a_newer_state_is_refused_and_left_alone(backend):
    backend.open().close()
    backend.set_schema_version(SCHEMA_VERSION + 1)
    store = _open_unmigrated(backend)
    with pytest.raises(NewerSchemaError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        store.migrate(dry_run=True)
    with pytest.raises(NewerSchemaError):
        store.migrate()
    assert store.schema_version() == SCHEMA_VERSION + 1


def test_plan_lists_the_steps_between_versions():
    assert plan(0, "x").steps == list(range(1, SCHEMA_VERSION + 1))
    assert plan(SCHEMA_VERSION, "x").steps == []
    assert plan(0, "x", target=1).steps == [1]
    with pytest.raises(NewerSchemaError, match="state x has schema version"):
        plan(SCHEMA_VERSION + 1, "x")


def test_pages_since_reads_the_v2_index(backend, store):
    """The migration's point: the quality monitor's 30-day window is an index range, not a scan
    of every page ever decided."""
    with store.transaction():
        for i in range(2000):
            store.add_page(str(i), T0 + i * HOUR, f"{i},{i}", "{}", 1, "delivered")
    since = T0 + 1970 * HOUR
    assert len(store.pages_since(since)) == 30
    if backend.name == "sqlite":
        plan_text = str(store.query("EXPLAIN QUERY PLAN " + PAGES_SINCE, since).fetchall())
    else:
        store.query("ANALYZE outbox")
        plan_text = str(store.query("EXPLAIN " + PAGES_SINCE, since).fetchall())
    assert "outbox_result_time" in plan_text
