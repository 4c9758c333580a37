"""Upgrading a live database from the v2 sync core (0004, as 0006 left it) to
v3 (0007), rolling back to v2 and upgrading again, as the table owner who is
no superuser (and as a superuser).

The database holds bars (some with two credential rows) and events. Writers
toggle credentials, one to three bars a transaction, all through the upgrade
and the rollback, and two consumers follow the events across both: a
listener with the documented protocol (LISTEN, then read status_events after
the last id handed on) and this release's relay. Each step also begins while
a transaction that staged a status change under the core in place is still
open, and waits for it. No event is lost or repeated, no bar drifts; the
rollback restores 0006's schema exactly and v2's behaviour.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from devtools.older import V2_CORE, migrate_up_to
from mpesa_sync import migrations
from tests.support.catalog import describe
from tests.support.database import Database, fresh_database, templates
from tests.support.listener import Listener, relayed_ids
from tests.support.relay import (
    EVENT_FIELDS,
    RelayProcess,
    event_ids_after,
    log_state,
    newest_event_id,
)
from tests.support.servers import Server
from tests.support.waiting import wait_for
from tests.support.writers import TOGGLE, Writers

pytestmark = pytest.mark.roles("owner", "superuser")

T = TypeVar("T")

V3 = "0007_mpesa_sync_v3"

# Our triggers on mpesa_credentials (the host has its own).
CREDENTIAL_TRIGGERS = """
    SELECT array_agg(tgname::text ORDER BY tgname) FROM pg_trigger
    WHERE tgrelid = 'public.mpesa_credentials'::regclass
      AND starts_with(tgname::text, 'mpesa_sync_')
"""
V2_TRIGGERS = [
    f"mpesa_sync_credentials_{op}_v2" for op in ("delete", "insert", "truncate", "update")
]
V3_TRIGGERS = [name.replace("_v2", "_v3") for name in V2_TRIGGERS]


def catalog_at(server: Server, role: str, last: str) -> dict[str, list[tuple[object, ...]]]:
    """The schema of a fresh install up to ``last`` with this checkout's files."""
    with fresh_database(server, templates(role)[0], prefix="catalog", role=role) as fresh:
        migrate_up_to(fresh.dsn, last, released=False)
        return describe(fresh.dsn)


def events_of(db: Database, bar: uuid.UUID, after: int) -> list[dict[str, object]]:
    return db.query(
        "SELECT event_id, mpesa_enabled, source FROM mpesa_sync.status_events "
        "WHERE bar_id = %s AND event_id > %s ORDER BY event_id",
        (bar, after),
    )


def past_open_transaction(db: Database, bar: uuid.UUID, step: Callable[[], T]) -> T:
    """Run ``step`` (a migrate or a rollback) while a transaction that has
    toggled ``bar`` (a status change staged by the core in place, its
    publish queued for commit) is open, and commit that transaction once
    ``step`` waits for it."""
    with db.connect(autocommit=False) as conn, ThreadPoolExecutor(1) as pool:
        conn.execute(TOGGLE, (bar,))
        running = pool.submit(step)
        wait_for(
            "the step to wait for the open transaction",
            lambda: running.done() or db.awaits_exclusive_lock("public.mpesa_credentials"),
            60,
        )
        conn.commit()
        return running.result(timeout=120)


def toggle_publishes_one_event(db: Database, bar: uuid.UUID) -> None:
    """A toggle of ``bar`` syncs it, and its commit publishes one event
    (numbered at commit, as v2 and v3 both do), notified on mpesa_status."""
    before = newest_event_id(db)
    was = db.enabled(bar)
    with db.connect() as listening:
        listening.execute("LISTEN mpesa_status")
        with db.connect(autocommit=False) as conn:
            conn.execute(TOGGLE, (bar,))
            inside = conn.execute("SELECT coalesce(max(event_id), 0) FROM mpesa_sync.status_events")
            assert inside.fetchone()[0] == before  # type: ignore[index]
            conn.commit()
        [notified] = list(listening.notifies(timeout=10, stop_after=1))
    assert db.enabled(bar) is (not was)
    [event] = events_of(db, bar, before)
    assert event["mpesa_enabled"] is (not was)
    assert event["source"] == "credentials"
    assert newest_event_id(db) == event["event_id"]
    payload = json.loads(notified.payload)
    assert set(payload) == EVENT_FIELDS
    assert payload["event_id"] == event["event_id"]
    assert (payload["bar_id"], payload["mpesa_enabled"]) == (str(bar), not was)


def test_upgrade_from_v2_under_load_loses_and_repeats_no_event(
    server: Server, host_db: Database
) -> None:
    assert migrate_up_to(host_db.dsn, V2_CORE, released=False)[-1] == V2_CORE
    at_v2 = catalog_at(server, host_db.role, V2_CORE)
    at_v3 = catalog_at(server, host_db.role, V3)
    assert describe(host_db.dsn) == at_v2
    bars = [host_db.add_bar(f"bar {i}") for i in range(16)]
    for i, bar in enumerate(bars):
        host_db.add_credentials(bar, active=i % 2 == 0)
        # a second row: a toggle is then a two-row statement; both rows
        # alike flip the bar, one of each (bar 6) never does
        if i % 3 == 0:
            host_db.add_credentials(bar, "production", active=i % 4 == 0)
    held = host_db.add_bar("held open across each step")  # toggled by no writer
    host_db.add_credentials(held, active=False)
    generation = log_state(host_db)["generation"]
    start = newest_event_id(host_db)
    assert start > 0  # the v2 core published the inserts' events

    with (
        Listener(host_db, start) as listener,
        RelayProcess(host_db.dsn, "--since", f"{generation}:{start}") as relay,
    ):
        relay.wait_listening()
        with Writers(host_db, bars, count=4, most=3) as writers:
            writers.wait_for_more(50)
            report = past_open_transaction(host_db, held, lambda: migrations.migrate(host_db.dsn))
            upgraded_at = newest_event_id(host_db)
            triggers_after_upgrade = host_db.scalar(CREDENTIAL_TRIGGERS)
            catalog_after_upgrade = describe(host_db.dsn)
            writers.wait_for_more(50)
            before_rollback = newest_event_id(host_db)
            rolled_back = past_open_transaction(
                host_db, held, lambda: migrations.rollback(host_db.dsn, count=1)
            )
            rolled_back_at = newest_event_id(host_db)
            writers.wait_for_more(50)
        assert writers.errors == []
        newest = newest_event_id(host_db)
        relayed = relayed_ids(relay, newest)
        relay.stop()
        listener.wait_for(newest)

    assert report.applied == [V3]
    assert (report.fixed, report.refused) == (0, [])
    assert triggers_after_upgrade == V3_TRIGGERS
    assert catalog_after_upgrade == at_v3
    assert rolled_back == [V3]
    table_ids = event_ids_after(host_db, start)
    assert listener.ids == table_ids  # nothing lost, nothing repeated, in order
    assert relayed == table_ids
    # events published by v2, then by v3, then by v2 again
    assert start < upgraded_at < before_rollback <= rolled_back_at < newest
    assert len([i for i in table_ids if upgraded_at < i <= before_rollback]) >= 10
    # each open transaction's change was published once, before the step
    # that waited for it took the triggers away
    held_events = events_of(host_db, held, start)
    assert [e["mpesa_enabled"] for e in held_events] == [True, False]
    assert held_events[0]["event_id"] <= upgraded_at < held_events[1]["event_id"]
    assert held_events[1]["event_id"] <= rolled_back_at
    assert host_db.drift() == []
    assert host_db.scalar("SELECT count(*) FROM mpesa_sync.pending_changes") == 0

    # back at v2: 0006's schema exactly, and v2's behaviour
    assert describe(host_db.dsn) == at_v2
    assert host_db.scalar(CREDENTIAL_TRIGGERS) == V2_TRIGGERS
    toggle_publishes_one_event(host_db, bars[0])  # two rows
    toggle_publishes_one_event(host_db, bars[1])  # one row
    assert host_db.drift() == []

    # and forward again
    assert migrations.migrate(host_db.dsn).applied == [V3]
    assert describe(host_db.dsn) == at_v3
    toggle_publishes_one_event(host_db, bars[0])
    toggle_publishes_one_event(host_db, bars[1])
    assert host_db.drift() == []
    assert host_db.scalar("SELECT count(*) FROM mpesa_sync.pending_changes") == 0
