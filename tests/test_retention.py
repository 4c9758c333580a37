"""Retention on the real server: mpesa_sync.prune_v1 and `mpesa-sync prune`.

Events go by age, oldest first and as a prefix of the log; alerts go only
once acknowledged (before the horizon); one batch per transaction. A prune
of a million old events runs beside live writers and a relay without drift
and without a lost live event.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import psycopg
import pytest

from tests.support.cli import assert_one_line_error, run_cli
from tests.support.database import Database
from tests.support.relay import (
    RelayProcess,
    SseReader,
    log_state,
    new_events,
    newest_event_id,
    set_active,
    strip_at,
)

# The install, upgrade, rollback, settings, relay and prune tests run as the
# managed-host owner (no superuser) and as a superuser.
pytestmark = pytest.mark.roles("owner", "superuser")


def add_events(db: Database, ages_in_days: list[float]) -> list[int]:
    """One event per age, in this order (ids ascending), written behind the triggers."""
    return [
        db.scalar(
            """INSERT INTO mpesa_sync.status_events (bar_id, mpesa_enabled, source, at)
               VALUES (%s, true, 'credentials', now() - make_interval(secs => %s))
               RETURNING event_id""",
            (uuid.uuid4(), age * 86400),
        )
        for age in ages_in_days
    ]


def add_alert(db: Database, age_days: float, acknowledged_days_ago: float | None) -> int:
    return db.scalar(
        """INSERT INTO mpesa_sync.alerts (kind, created_at, acknowledged_at)
           VALUES ('fix_refused', now() - make_interval(secs => %s),
                   now() - make_interval(secs => %s))
           RETURNING id""",
        (
            age_days * 86400,
            None if acknowledged_days_ago is None else acknowledged_days_ago * 86400,
        ),
    )


def event_ids(db: Database) -> list[int]:
    return [
        r["event_id"] for r in db.query("SELECT event_id FROM mpesa_sync.status_events ORDER BY 1")
    ]


def prune_cli(db: Database, *args: str) -> dict[str, Any]:
    result = run_cli("prune", "--dsn", db.dsn, "--format", "json", *args)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def test_prunes_events_by_age_oldest_first(db: Database) -> None:
    ids = add_events(db, [90, 60, 31, 29, 45, 1])  # 45 is older, but comes after 29
    report = prune_cli(db, "--older-than", "30d")
    assert report == {
        "events_deleted": 3,
        "alerts_deleted": 0,
        "oldest_event_id": ids[3],
        "dry_run": False,
        "older_than_seconds": 30 * 86400,
        "batches": 1,
    }
    # A prefix of the log: the 45-day-old event waits for the 29-day-old one.
    assert event_ids(db) == ids[3:]
    state = log_state(db)
    assert (state["pruned_through"], state["oldest_event_id"]) == (ids[2], ids[3])
    assert state["newest_event_id"] == ids[-1]
    assert prune_cli(db, "--older-than", "30d")["events_deleted"] == 0  # idempotent
    assert prune_cli(db, "--older-than", "12h")["events_deleted"] == 3  # 29, 45 and 1 day old
    state = log_state(db)
    assert event_ids(db) == [] and state["oldest_event_id"] is None
    assert state["newest_event_id"] == state["pruned_through"] == ids[-1]  # still knows its place


def test_keeps_open_alerts_and_recent_acknowledgements(db: Database) -> None:
    old_open = add_alert(db, 400, None)
    old_acked_long_ago = add_alert(db, 400, 200)
    old_acked_lately = add_alert(db, 400, 2)
    new_open = add_alert(db, 1, None)
    report = prune_cli(db, "--older-than", "30d")
    assert report["alerts_deleted"] == 1
    kept = [r["id"] for r in db.query("SELECT id FROM mpesa_sync.alerts ORDER BY id")]
    assert kept == [old_open, old_acked_lately, new_open]
    assert old_acked_long_ago not in kept
    # An open alert stays however old; it goes only once acknowledged long enough ago.
    result = run_cli("alerts", "--dsn", db.dsn)
    assert str(old_open) in result.stdout and str(new_open) in result.stdout


def test_batches_each_in_a_transaction_of_their_own(db: Database) -> None:
    ids = add_events(db, [100] * 25 + [1])
    for _ in range(12):
        add_alert(db, 100, 90)
    report = prune_cli(db, "--older-than", "30d", "--batch-size", "10")
    assert report["events_deleted"] == 25 and report["alerts_deleted"] == 12
    assert report["batches"] == 3  # 10 + 10 + 5 events; the last batch finds less than 10
    assert report["oldest_event_id"] == ids[-1]


def test_a_failed_batch_keeps_the_batches_before_it(db: Database) -> None:
    """Each batch commits on its own: a batch that fails (here a host trigger
    refuses one delete) leaves the earlier batches done and the log exact."""
    ids = add_events(db, [100] * 25 + [1])
    db.execute(
        f"""CREATE FUNCTION public.refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF OLD.event_id = {ids[15]} THEN RAISE EXCEPTION 'keep event {ids[15]}'; END IF;
                RETURN OLD;
            END $$;
            CREATE TRIGGER refuse_one BEFORE DELETE ON mpesa_sync.status_events
                FOR EACH ROW EXECUTE FUNCTION public.refuse_one();"""
    )
    result = run_cli("prune", "--dsn", db.dsn, "--older-than", "30d", "--batch-size", "10")
    assert result.code == 2
    assert_one_line_error(result.stderr, f"keep event {ids[15]}")
    assert event_ids(db) == ids[10:]  # the first batch committed, the second rolled back
    assert log_state(db)["pruned_through"] == ids[9]


def test_dry_run_counts_everything_and_changes_nothing(db: Database) -> None:
    ids = add_events(db, [100] * 25 + [1, 100])
    add_alert(db, 100, 90)
    add_alert(db, 100, None)
    before = (event_ids(db), db.query("SELECT * FROM mpesa_sync.alerts ORDER BY id"), log_state(db))
    report = prune_cli(db, "--older-than", "30d", "--dry-run", "--batch-size", "10")
    assert (report["events_deleted"], report["alerts_deleted"]) == (25, 1)
    assert report["oldest_event_id"] == ids[25] and report["dry_run"] is True
    after = (event_ids(db), db.query("SELECT * FROM mpesa_sync.alerts ORDER BY id"), log_state(db))
    assert after == before
    text = run_cli("prune", "--dsn", db.dsn, "--older-than", "30d", "--dry-run")
    assert text.code == 0
    assert text.stdout.strip() == (
        f"would prune 25 event(s) and 1 acknowledged alert(s) older than 30d; "
        f"the oldest event would be {ids[25]}"
    )


def test_the_sql_function_runs_in_any_transaction_and_refuses_bad_arguments(
    db: Database,
) -> None:
    add_events(db, [100, 100, 1])
    # pg_cron, PostgREST and drivers call it inside a transaction block: it works there.
    with db.connect(autocommit=False) as conn:
        with conn.transaction():
            conn.execute("SELECT 1")
            (result,) = conn.execute("SELECT mpesa_sync.prune_v1('30 days')").fetchone()  # type: ignore[misc]
        assert result["events_deleted"] == 2 and result["more"] is False
        assert set(result) == {"events_deleted", "alerts_deleted", "oldest_event_id", "more"}
        for call in (
            "SELECT mpesa_sync.prune_v1('-1 day')",
            "SELECT mpesa_sync.prune_v1(NULL)",
            "SELECT mpesa_sync.prune_v1('1 day', 0)",
        ):
            with pytest.raises(psycopg.errors.InvalidParameterValue), conn.transaction():
                conn.execute(call)  # type: ignore[arg-type]


def test_prune_on_a_database_without_the_schema_is_exit_2(host_db: Database) -> None:
    result = run_cli("prune", "--dsn", host_db.dsn, "--older-than", "30d")
    assert result.code == 2
    assert_one_line_error(result.stderr, "run `mpesa-sync migrate` first")
    assert host_db.scalar("SELECT to_regnamespace('mpesa_sync')") is None


def test_a_million_old_events_pruned_beside_writers_and_a_relay(db: Database) -> None:
    """A year of backlog: one INSERT ... SELECT of 1M old events, pruned while
    four writers flip bars and a relay streams to stdout and SSE. Afterwards no
    bar has drifted and every live event reached both, in order, once."""
    db.execute(
        """INSERT INTO mpesa_sync.status_events (bar_id, mpesa_enabled, source, at)
           SELECT '00000000-0000-4000-8000-00000000000a', i % 2 = 0, 'credentials',
                  now() - interval '400 days' + i * interval '25 seconds'
           FROM generate_series(1, 1000000) AS i"""
    )
    db.execute("ANALYZE mpesa_sync.status_events")
    bars = [db.add_bar(f"bar {i}") for i in range(8)]
    for bar in bars:
        db.add_credentials(bar, active=False)
    start = newest_event_id(db)
    assert start == 1_000_000

    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(mine: list[uuid.UUID]) -> None:
        active = True
        try:
            with db.connect() as conn:
                while not stop.is_set():
                    for bar in mine:
                        conn.execute(
                            "UPDATE mpesa_credentials SET is_active = %s WHERE tenant_id = %s",
                            (active, bar),
                        )
                    active = not active
                    stop.wait(0.002)  # pacing, so that four writers leave the prune some CPU
        except BaseException as exc:
            errors.append(exc)

    with RelayProcess(db.dsn, "--http", "127.0.0.1:0") as relay:
        url = relay.http_url()
        relay.wait_listening()
        reader = SseReader(f"{url}/events")
        writers = [threading.Thread(target=writer, args=(bars[i::4],)) for i in range(4)]
        try:
            for thread in writers:
                thread.start()
            began = db.scalar("SELECT clock_timestamp()")
            report = prune_cli(db, "--older-than", "30d")
            ended = db.scalar("SELECT clock_timestamp()")
        finally:
            stop.set()
            for thread in writers:
                thread.join()
        assert errors == []
        assert report["events_deleted"] == 1_000_000 and report["batches"] >= 100
        assert report["oldest_event_id"] == start + 1
        during = db.scalar(
            "SELECT count(*) FROM mpesa_sync.status_events WHERE at BETWEEN %s AND %s",
            (began, ended),
        )
        assert during > 0, "the writers wrote nothing while the prune ran"

        expected = new_events(db, start)
        assert strip_at(relay.events(len(expected), timeout=60)) == expected
        sse = reader.take(len(expected), timeout=60)
        assert [e["id"] for e in sse] == [e["event_id"] for e in expected]
        assert all("event" not in e for e in sse)  # no reset: the live position was never pruned
        reader.close()
        now = bool(db.enabled(bars[0]))
        set_active(db, bars[0], not now)
        set_active(db, bars[0], now)
        tail = relay.events(2)  # the next line is the next event: nothing queued in between
        assert [e["event_id"] for e in tail] == [newest_event_id(db) - 1, newest_event_id(db)]
        relay.stop()
    assert db.drift() == []
    assert event_ids(db)[0] == start + 1
