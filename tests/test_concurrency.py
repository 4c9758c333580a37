"""Many writers at once, readers that check every snapshot they take, and what
it costs in throughput.

- The platform's workload (devtools/workload.py): twelve writers,
  transactions of one to three statements over several bars, every kind of
  write. Its transactions cannot deadlock each other on their own, and with
  mpesa-sync they must not either; no committed snapshot may show drift.
- An adversarial mix: any order, several bars per statement, moves anywhere.
  The host's own lock order lets some of these deadlock; drift never appears.
- Event ids become visible in order, transactions over several bars included.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import errors

from devtools import workload
from tests.support.database import DRIFT_SQL, Database

WRITERS = 12
TRANSACTIONS_PER_WRITER = 60

# Within one snapshot, the newest event of each bar agrees with the bar.
STALE_SQL = """
    SELECT b.id
    FROM bars AS b
    JOIN LATERAL (
        SELECT e.mpesa_enabled
        FROM mpesa_sync.status_events AS e
        WHERE e.bar_id = b.id
        ORDER BY e.event_id DESC
        LIMIT 1
    ) AS e ON true
    WHERE e.mpesa_enabled IS DISTINCT FROM b.mpesa_enabled
"""


@contextmanager
def snapshot_readers(db: Database, failures: list[str]) -> Iterator[Counter[str]]:
    """Readers at READ COMMITTED and REPEATABLE READ that check every snapshot
    until the block ends; yields how many snapshots each level checked."""
    done = threading.Event()
    snapshots: Counter[str] = Counter()
    lock = threading.Lock()

    def reader(isolation: str) -> None:
        with db.connect() as conn:
            while not done.is_set():
                with conn.transaction():
                    conn.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
                    drift = conn.execute(DRIFT_SQL).fetchall()
                    stale = conn.execute(STALE_SQL).fetchall()
                with lock:
                    if drift or stale:
                        failures.append(f"{isolation} snapshot: drift {drift}, stale {stale}")
                    snapshots[isolation] += 1

    readers = [
        threading.Thread(target=reader, args=(level,))
        for level in ("READ COMMITTED", "REPEATABLE READ")
    ]
    for thread in readers:
        thread.start()
    try:
        yield snapshots
    finally:
        done.set()
        for thread in readers:
            thread.join(timeout=60)


def run_platform_workload(db: Database) -> workload.WorkloadResult:
    with db.connect() as conn:
        bars = workload.create_bars(conn, main=24, writers=WRITERS)
    return workload.run(
        db.dsn, bars, writers=WRITERS, transactions_per_writer=TRANSACTIONS_PER_WRITER, seed=7
    )


def test_platform_workload_never_deadlocks_and_never_shows_drift(
    db: Database, host_db: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    failures: list[str] = []
    with snapshot_readers(db, failures) as snapshots:
        ours = run_platform_workload(db)
    bare = run_platform_workload(host_db)  # the same writers, without mpesa-sync

    assert ours.deadlocks == [] and bare.deadlocks == []
    assert ours.failures == [] and bare.failures == []
    assert failures == []
    assert db.drift() == []
    assert ours.transactions + ours.refused_by_host == WRITERS * TRANSACTIONS_PER_WRITER
    kinds = {"toggle", "insert", "delete", "bar_write", "move_out", "move_back", "bars_write"}
    assert kinds <= set(ours.statements), ours.statements
    assert snapshots["READ COMMITTED"] > 10 and snapshots["REPEATABLE READ"] > 10, snapshots
    # every change is an event, and every event a change: the events replay the bars
    replayed = {
        row["bar_id"]: row["mpesa_enabled"]
        for row in db.query(
            "SELECT DISTINCT ON (bar_id) bar_id, mpesa_enabled FROM mpesa_sync.status_events"
            " ORDER BY bar_id, event_id DESC"
        )
    }
    current = {row["id"]: row["mpesa_enabled"] for row in db.query("SELECT * FROM bars")}
    assert all(current[bar] == value for bar, value in replayed.items())

    with capsys.disabled():
        print(
            f"\n  mixed writers ({WRITERS}, {TRANSACTIONS_PER_WRITER} transactions each):"
            f" {ours.operations_per_second:,.0f} statements/s with mpesa-sync,"
            f" {bare.operations_per_second:,.0f} without"
            f" ({ours.operations_per_second / bare.operations_per_second:.0%});"
            f" {ours.refused_by_host} and {bare.refused_by_host} refused by the host's constraints"
        )


# -- an adversarial mix ----------------------------------------------------------

Op = Callable[[psycopg.Connection[Any], random.Random, list[uuid.UUID]], str]


def _op_toggle(conn: psycopg.Connection[Any], rng: random.Random, bars: list[uuid.UUID]) -> str:
    conn.execute(
        """UPDATE mpesa_credentials SET is_active = NOT coalesce(is_active, false)
           WHERE id = (SELECT id FROM mpesa_credentials WHERE tenant_id = %s LIMIT 1)""",
        (rng.choice(bars),),
    )
    return "toggle"


def _op_insert(conn: psycopg.Connection[Any], rng: random.Random, bars: list[uuid.UUID]) -> str:
    conn.execute(
        """INSERT INTO mpesa_credentials (tenant_id, environment, business_shortcode,
               consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)
           VALUES (%s, %s, '174379', 'k', 's', 'p', %s)
           ON CONFLICT (tenant_id, environment) DO NOTHING""",
        (rng.choice(bars), rng.choice(["sandbox", "production"]), rng.choice([True, False, None])),
    )
    return "insert"


def _op_delete(conn: psycopg.Connection[Any], rng: random.Random, bars: list[uuid.UUID]) -> str:
    conn.execute(
        """DELETE FROM mpesa_credentials
           WHERE id = (SELECT id FROM mpesa_credentials WHERE tenant_id = %s LIMIT 1)""",
        (rng.choice(bars),),
    )
    return "delete"


def _op_move(conn: psycopg.Connection[Any], rng: random.Random, bars: list[uuid.UUID]) -> str:
    source, target = rng.sample(bars, 2)
    conn.execute(
        """UPDATE mpesa_credentials SET tenant_id = %s
           WHERE id = (SELECT id FROM mpesa_credentials WHERE tenant_id = %s LIMIT 1)""",
        (target, source),
    )
    return "move"


def _op_bar_write(conn: psycopg.Connection[Any], rng: random.Random, bars: list[uuid.UUID]) -> str:
    conn.execute(
        "UPDATE bars SET mpesa_enabled = %s WHERE id = %s",
        (rng.choice([True, False, None]), rng.choice(bars)),
    )
    return "bar_write"


def _op_unordered_transaction(
    conn: psycopg.Connection[Any], rng: random.Random, bars: list[uuid.UUID]
) -> str:
    """Two or three of the above in one transaction, bars in any order."""
    with conn.transaction():
        for _ in range(rng.randint(2, 3)):
            rng.choice(SINGLE_OPS)(conn, rng, bars)
    return "unordered_transaction"


def _op_multi_credentials(
    conn: psycopg.Connection[Any], rng: random.Random, bars: list[uuid.UUID]
) -> str:
    with conn.transaction():
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM mpesa_credentials WHERE tenant_id = ANY(%s) ORDER BY id"
                " FOR NO KEY UPDATE",
                (rng.sample(bars, 5),),
            )
        ]
        conn.execute(
            "UPDATE mpesa_credentials SET is_active = %s WHERE id = ANY(%s)",
            (rng.choice([True, False]), ids),
        )
    return "multi_credentials"


SINGLE_OPS: list[Op] = [_op_toggle, _op_toggle, _op_insert, _op_delete, _op_move, _op_bar_write]
OPS: list[Op] = [*SINGLE_OPS, _op_unordered_transaction, _op_multi_credentials]


def test_adversarial_writers_never_show_drift(db: Database) -> None:
    """Deadlocks are possible here without mpesa-sync too (two moves that swap
    slots, transactions in opposite orders); they are counted, not failed.
    Every other error fails the test, and so does drift in any snapshot."""
    bars = [db.add_bar(f"bar{i}") for i in range(16)]
    for i, bar in enumerate(bars):
        db.add_credentials(bar, "sandbox", active=i % 2 == 0)
    failures: list[str] = []
    done_ops: Counter[str] = Counter()
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with db.connect() as conn:
            for _ in range(120):
                op = rng.choice(OPS)
                try:
                    name = op(conn, rng, bars)
                except workload.REFUSED_BY_HOST:
                    name = "refused_by_host"
                except errors.DeadlockDetected:
                    name = "deadlock"
                except psycopg.Error as exc:
                    with lock:
                        failures.append(f"{op.__name__}: {type(exc).__name__}: {exc}")
                    continue
                with lock:
                    done_ops[name] += 1

    with snapshot_readers(db, failures) as snapshots:
        threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(WRITERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)

    assert failures == []
    assert db.drift() == []
    for name in ("toggle", "insert", "delete", "move", "bar_write", "unordered_transaction"):
        assert done_ops[name] > 0, done_ops
    assert done_ops["multi_credentials"] > 0, done_ops
    assert snapshots["READ COMMITTED"] > 10 and snapshots["REPEATABLE READ"] > 10, snapshots


def test_event_ids_never_become_visible_out_of_order(db: Database) -> None:
    """A reader that polls event ids never sees id n+1 while n is still to come,
    with writers whose transactions change one to three bars each."""
    bars = [db.add_bar(f"bar{i}") for i in range(8)]
    for bar in bars:
        db.add_credentials(bar, active=False)
    start = int(db.scalar("SELECT coalesce(max(event_id), 0) FROM mpesa_sync.status_events"))
    done = threading.Event()
    seen: list[int] = []

    def poller() -> None:
        last = start
        with db.connect() as conn:
            while not done.is_set():
                rows = conn.execute(
                    "SELECT event_id FROM mpesa_sync.status_events"
                    " WHERE event_id > %s ORDER BY event_id",
                    (last,),
                ).fetchall()
                for (event_id,) in rows:
                    seen.append(event_id)
                    last = event_id

    def flipper(seed: int) -> None:
        rng = random.Random(seed)
        with db.connect() as conn:
            for _ in range(40):
                with conn.transaction():
                    for bar in sorted(rng.sample(bars, rng.randint(1, 3))):
                        conn.execute(
                            "UPDATE mpesa_credentials SET is_active = NOT is_active"
                            " WHERE tenant_id = %s",
                            (bar,),
                        )

    poll = threading.Thread(target=poller)
    poll.start()
    flippers = [threading.Thread(target=flipper, args=(seed,)) for seed in range(8)]
    for thread in flippers:
        thread.start()
    for thread in flippers:
        thread.join()
    done.set()
    poll.join()
    all_ids = [e["event_id"] for e in db.events() if e["event_id"] > start]
    assert len(all_ids) >= 8 * 40
    # What the poller saw, in the order it saw it, is a prefix of the
    # committed ids: nothing skipped, nothing out of order.
    assert seen == all_ids[: len(seen)]
    assert len(seen) > 0
