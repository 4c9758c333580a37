"""Status events are numbered and published when their transaction commits.

What the deferred publish does in the cases that bend "at commit": savepoints,
a bar changed twice, SET CONSTRAINTS ALL IMMEDIATE, PREPARE TRANSACTION, and
a transaction left open on one bar while others change theirs.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from psycopg import errors, sql

from tests.support.database import Database
from tests.support.relay import newest_event_id
from tests.support.waiting import wait_for
from tests.support.writers import TOGGLE

SET_ACTIVE = "UPDATE mpesa_credentials SET is_active = %s WHERE id = %s"

# Someone waits for the event-order lock (publish_status_events_v3).
WAITS_FOR_EVENT_ORDER = """
    SELECT EXISTS (
        SELECT 1 FROM pg_locks
        WHERE locktype = 'advisory' AND NOT granted
          AND ((classid::bigint << 32) | objid::bigint) = 470037132129
    )
"""
HOLDS_EVENT_ORDER = WAITS_FOR_EVENT_ORDER.replace("NOT granted", "granted")


def bar_with_credential(db: Database, name: str, *, active: bool) -> tuple[uuid.UUID, uuid.UUID]:
    bar = db.add_bar(name)
    return bar, db.add_credentials(bar, active=active)


def events_of(db: Database, after: int = 0) -> list[tuple[Any, bool, str]]:
    """(bar, value, source) of each event after event ``after``, in order."""
    return [
        (e["bar_id"], e["mpesa_enabled"], e["source"]) for e in db.events() if e["event_id"] > after
    ]


def pending(db: Database) -> int:
    return int(db.scalar("SELECT count(*) FROM mpesa_sync.pending_changes"))


def test_events_appear_only_at_commit_with_the_committed_value(db: Database) -> None:
    bar, cred = bar_with_credential(db, "a", active=False)
    with db.connect(autocommit=False) as conn:
        conn.execute(SET_ACTIVE, (True, cred))
        assert conn.execute("SELECT count(*) FROM mpesa_sync.status_events").fetchone()[0] == 0
        assert db.events() == []
        conn.commit()
    assert events_of(db) == [(bar, True, "credentials")]
    assert pending(db) == 0


def test_a_bar_switched_off_and_on_again_in_one_transaction_gets_no_event(db: Database) -> None:
    bar, cred = bar_with_credential(db, "a", active=True)
    other, other_cred = bar_with_credential(db, "b", active=True)
    setup = newest_event_id(db)
    with db.connect() as conn, conn.transaction():
        conn.execute(SET_ACTIVE, (False, cred))
        conn.execute(SET_ACTIVE, (True, cred))
        conn.execute(SET_ACTIVE, (False, other_cred))
    assert db.enabled(bar) is True
    assert events_of(db, setup) == [(other, False, "credentials")]


def test_a_bar_switched_twice_the_same_way_gets_one_event(db: Database) -> None:
    bar = db.add_bar("two rows")
    sandbox = db.add_credentials(bar, "sandbox", active=False)
    production = db.add_credentials(bar, "production", active=False)
    with db.connect() as conn, conn.transaction():
        conn.execute(SET_ACTIVE, (True, sandbox))
        conn.execute(SET_ACTIVE, (False, sandbox))
        conn.execute(SET_ACTIVE, (True, production))
    assert events_of(db) == [(bar, True, "credentials")]


def test_one_transaction_over_several_bars_gets_consecutive_ids_in_bar_order(
    db: Database,
) -> None:
    bars = [bar_with_credential(db, f"bar {i}", active=False) for i in range(4)]
    with db.connect() as conn, conn.transaction():
        for bar, _ in reversed(bars):  # written in the opposite order
            conn.execute(TOGGLE, (bar,))
    events = db.events()
    assert [e["bar_id"] for e in events] == sorted(bar for bar, _ in bars)
    ids = [e["event_id"] for e in events]
    assert ids == list(range(ids[0], ids[0] + 4))


def test_the_source_is_that_of_the_last_change(db: Database) -> None:
    bar, cred = bar_with_credential(db, "a", active=False)
    db.force_enabled(bar, True)  # drift, behind the triggers' back
    with db.connect() as conn, conn.transaction():
        conn.execute("SELECT * FROM mpesa_sync.fix_bars_v2(ARRAY[%s]::uuid[])", (bar,))
        conn.execute(SET_ACTIVE, (True, cred))
        conn.execute(SET_ACTIVE, (False, cred))
    assert events_of(db) == [(bar, False, "credentials")]


def test_a_rolled_back_savepoint_takes_its_status_changes_with_it(db: Database) -> None:
    first, _ = bar_with_credential(db, "first", active=False)
    second, _ = bar_with_credential(db, "second", active=False)
    with db.connect() as conn, conn.transaction():
        with pytest.raises(errors.RaiseException), conn.transaction():  # a savepoint
            conn.execute(TOGGLE, (first,))
            conn.execute("DO $$ BEGIN RAISE EXCEPTION 'undo'; END $$")
        conn.execute(TOGGLE, (second,))
    assert db.enabled(first) is False
    assert events_of(db) == [(second, True, "credentials")]


def test_a_savepoint_rolled_back_after_the_first_change_keeps_that_change(db: Database) -> None:
    first, _ = bar_with_credential(db, "first", active=False)
    second, _ = bar_with_credential(db, "second", active=False)
    with db.connect(autocommit=False) as conn:
        conn.execute(TOGGLE, (first,))
        conn.execute("SAVEPOINT s")
        conn.execute(TOGGLE, (second,))
        conn.execute(TOGGLE, (first,))  # back to where it was, inside the savepoint
        conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.commit()
    assert (db.enabled(first), db.enabled(second)) == (True, False)
    assert events_of(db) == [(first, True, "credentials")]
    assert db.drift() == []


def test_an_open_transaction_on_one_bar_does_not_delay_another(db: Database) -> None:
    a, _ = bar_with_credential(db, "a", active=True)
    b, _ = bar_with_credential(db, "b", active=True)
    setup = newest_event_id(db)
    with db.connect(autocommit=False) as open_on_a, db.connect() as on_b:
        open_on_a.execute(TOGGLE, (a,))  # changes a's status and stays open
        # b's session may wait at most 5 ms for any lock: a wait behind a's
        # transaction would fail with lock_not_available, whatever the clock
        on_b.execute("SET lock_timeout = '5ms'")
        started = time.monotonic()
        for _ in range(3):  # off, on, off: three commits, three events
            on_b.execute(TOGGLE, (b,))
        elapsed = time.monotonic() - started
        # b's changes are committed and published while a's transaction is open
        assert events_of(db, setup) == [(b, value, "credentials") for value in (False, True, False)]
        assert elapsed < 0.5, f"three toggles of b took {elapsed:.3f} s"
        open_on_a.commit()
    assert [bar for bar, _, _ in events_of(db, setup)] == [b, b, b, a]


def test_set_constraints_immediate_publishes_per_statement_and_holds_the_order_lock(
    db: Database,
) -> None:
    """The documented price of SET CONSTRAINTS ALL IMMEDIATE: events are
    numbered at the end of each statement, and the transaction keeps the
    event-order lock from then to its commit, as v1 did for everyone."""
    a, _ = bar_with_credential(db, "a", active=False)
    b, _ = bar_with_credential(db, "b", active=False)
    with db.connect(autocommit=False) as immediate:
        immediate.execute("SET CONSTRAINTS ALL IMMEDIATE")
        immediate.execute(TOGGLE, (a,))
        # numbered already, visible to this transaction only
        own = immediate.execute("SELECT bar_id FROM mpesa_sync.status_events").fetchall()
        assert own == [(a,)]
        assert db.scalar(HOLDS_EVENT_ORDER)

        other = threading.Thread(target=db.execute, args=(TOGGLE, (b,)))
        other.start()
        wait_for(
            "b's commit to wait for the event-order lock", lambda: db.scalar(WAITS_FOR_EVENT_ORDER)
        )
        immediate.commit()
        other.join(timeout=30)
    assert [e["bar_id"] for e in db.events()] == [a, b]
    assert db.drift() == []


def test_set_constraints_immediate_after_the_changes_publishes_them_there(db: Database) -> None:
    a, _ = bar_with_credential(db, "a", active=False)
    with db.connect(autocommit=False) as conn:
        conn.execute(TOGGLE, (a,))
        assert conn.execute("SELECT count(*) FROM mpesa_sync.status_events").fetchone()[0] == 0
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        assert conn.execute("SELECT count(*) FROM mpesa_sync.status_events").fetchone()[0] == 1
        conn.execute(TOGGLE, (a,))  # and back: a second, later event
        conn.commit()
    assert events_of(db) == [(a, True, "credentials"), (a, False, "credentials")]


def test_prepare_transaction_of_a_status_change_is_refused_and_changes_nothing(
    db: Database,
) -> None:
    """A status change sends a NOTIFY, and PostgreSQL cannot PREPARE a
    transaction that has; the transaction is rolled back whole."""
    require_prepared_transactions(db)
    a, _ = bar_with_credential(db, "a", active=False)
    with db.connect(autocommit=False) as conn:
        conn.execute(TOGGLE, (a,))
        with pytest.raises(errors.FeatureNotSupported, match="NOTIFY"):
            conn.execute("PREPARE TRANSACTION 'mpesa_sync_test'")
        conn.rollback()
    assert db.enabled(a) is False
    assert db.events() == []
    assert db.scalar("SELECT count(*) FROM pg_prepared_xacts") == 0


def test_prepare_transaction_without_a_net_change_holds_no_order_lock(db: Database) -> None:
    require_prepared_transactions(db)
    a, _ = bar_with_credential(db, "a", active=True)
    b, _ = bar_with_credential(db, "b", active=False)
    two_rows = db.add_bar("two rows")
    keep = db.add_credentials(two_rows, "sandbox", active=True)
    drop = db.add_credentials(two_rows, "production", active=True)
    setup = newest_event_id(db)
    gid = f"mpesa_sync_{uuid.uuid4().hex[:8]}"
    with db.connect(autocommit=False) as conn:
        conn.execute(TOGGLE, (a,))
        conn.execute(TOGGLE, (a,))  # back again: no net change
        conn.execute(SET_ACTIVE, (False, drop))  # the bar keeps its status
        conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
    try:
        assert not db.scalar(HOLDS_EVENT_ORDER)
        db.execute(TOGGLE, (b,))  # another bar's status change is not held up
        assert events_of(db, setup) == [(b, True, "credentials")]
    finally:
        db.execute(sql.SQL("COMMIT PREPARED {}").format(sql.Literal(gid)))
    assert db.enabled(two_rows) is True
    assert db.scalar("SELECT is_active FROM mpesa_credentials WHERE id = %s", (keep,)) is True
    assert events_of(db, setup) == [(b, True, "credentials")]
    assert db.drift() == []
    assert pending(db) == 0


def require_prepared_transactions(db: Database) -> None:
    if int(db.scalar("SHOW max_prepared_transactions")) == 0:
        pytest.fail(
            "this server has max_prepared_transactions = 0; the suite's own clusters set 10"
        )
