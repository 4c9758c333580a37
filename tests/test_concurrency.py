"""Many writers at once, and a reader that checks every snapshot it takes.

No committed snapshot may ever show a bar whose mpesa_enabled disagrees with
its credentials, and single statements must never deadlock on our locks.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from typing import Any

import psycopg
from psycopg import errors

from tests.support.database import DRIFT_SQL, Database

WRITERS = 12
OPS_PER_WRITER = 200
BARS = 16

# Errors the host's own constraints raise for some random operations; they
# say nothing about our triggers.
EXPECTED = (errors.UniqueViolation, errors.ForeignKeyViolation)


def _op_toggle(conn: psycopg.Connection[Any], rng: random.Random, bars: list[uuid.UUID]) -> str:
    conn.execute("""UPDATE mpesa_credentials SET is_active = NOT coalesce(is_active, false)
                    WHERE id = (SELECT id FROM mpesa_credentials WHERE tenant_id = %s LIMIT 1)""",
                 (rng.choice(bars),))
    return "toggle"


def _op_insert(conn, rng, bars) -> str:
    conn.execute("""INSERT INTO mpesa_credentials (tenant_id, environment, business_shortcode,
                        consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)
                    VALUES (%s, %s, '174379', 'k', 's', 'p', %s)
                    ON CONFLICT (tenant_id, environment) DO NOTHING""",
                 (rng.choice(bars), rng.choice(["sandbox", "production"]),
                  rng.choice([True, False, None])))
    return "insert"


def _op_delete(conn, rng, bars) -> str:
    conn.execute("""DELETE FROM mpesa_credentials
                    WHERE id = (SELECT id FROM mpesa_credentials WHERE tenant_id = %s LIMIT 1)""",
                 (rng.choice(bars),))
    return "delete"


def _op_move(conn, rng, bars) -> str:
    source, target = rng.sample(bars, 2)
    conn.execute("""UPDATE mpesa_credentials SET tenant_id = %s
                    WHERE id = (SELECT id FROM mpesa_credentials WHERE tenant_id = %s LIMIT 1)""",
                 (target, source))
    return "move"


def _op_bar_write(conn, rng, bars) -> str:
    conn.execute("UPDATE bars SET mpesa_enabled = %s WHERE id = %s",
                 (rng.choice([True, False, None]), rng.choice(bars)))
    return "bar_write"


def _op_multi_bar_write(conn, rng, bars) -> str:
    # A well-behaved multi-row write: lock the rows in id order first (with the
    # lock an UPDATE takes anyway), then write them. Two plain multi-row
    # UPDATEs can deadlock each other with or without mpesa-sync.
    with conn.transaction():
        ids = sorted(rng.sample(bars, 4))
        conn.execute("SELECT 1 FROM bars WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE", (ids,))
        conn.execute("UPDATE bars SET mpesa_enabled = %s WHERE id = ANY(%s)",
                     (rng.choice([True, False]), ids))
    return "multi_bar_write"


def _op_multi_credentials(conn, rng, bars) -> str:
    with conn.transaction():
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM mpesa_credentials WHERE tenant_id = ANY(%s) ORDER BY id"
            " FOR NO KEY UPDATE", (rng.sample(bars, 5),))]
        conn.execute("UPDATE mpesa_credentials SET is_active = %s WHERE id = ANY(%s)",
                     (rng.choice([True, False]), ids))
    return "multi_credentials"


OPS = [_op_toggle, _op_toggle, _op_insert, _op_delete, _op_move, _op_bar_write,
       _op_multi_bar_write, _op_multi_credentials]


def test_many_writers_never_show_drift(db: Database) -> None:
    bars = [db.add_bar(f"bar{i}") for i in range(BARS)]
    for i, bar in enumerate(bars):
        db.add_credentials(bar, "sandbox", active=i % 2 == 0)
    done = threading.Event()
    failures: list[str] = []
    done_ops: Counter[str] = Counter()
    snapshots = Counter[str]()
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        with db.connect() as conn:
            for _ in range(OPS_PER_WRITER):
                op = rng.choice(OPS)
                try:
                    name = op(conn, rng, bars)
                except EXPECTED:
                    name = "refused_by_host_constraint"
                except psycopg.Error as exc:  # a deadlock or anything else is a failure
                    with lock:
                        failures.append(f"{op.__name__}: {type(exc).__name__}: {exc}")
                    continue
                with lock:
                    done_ops[name] += 1

    def reader(isolation: str) -> None:
        with db.connect() as conn:
            while not done.is_set():
                with conn.transaction():
                    conn.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
                    drift = conn.execute(DRIFT_SQL).fetchall()
                    # Within one snapshot, the newest event of each bar agrees with the bar.
                    stale = conn.execute("""
                        SELECT b.id FROM bars b
                        JOIN LATERAL (SELECT mpesa_enabled FROM mpesa_sync.status_events e
                                      WHERE e.bar_id = b.id ORDER BY event_id DESC LIMIT 1) e
                          ON true
                        WHERE e.mpesa_enabled IS DISTINCT FROM b.mpesa_enabled""").fetchall()
                if drift or stale:
                    with lock:
                        failures.append(f"{isolation} snapshot: drift {drift}, stale {stale}")
                with lock:
                    snapshots[isolation] += 1

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(WRITERS)]
    readers = [threading.Thread(target=reader, args=(level,))
               for level in ("READ COMMITTED", "REPEATABLE READ")]
    for t in readers + threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    done.set()
    for t in readers:
        t.join(timeout=60)

    assert failures == []
    assert db.drift() == []
    assert sum(done_ops.values()) == WRITERS * OPS_PER_WRITER
    for name in ("toggle", "insert", "delete", "move", "bar_write", "multi_bar_write",
                 "multi_credentials"):
        assert done_ops[name] > 0, done_ops
    assert snapshots["READ COMMITTED"] > 10 and snapshots["REPEATABLE READ"] > 10, snapshots


def test_event_ids_never_become_visible_out_of_order(db: Database) -> None:
    """A reader that polls event ids never sees id n+1 while n is still to come."""
    bars = [db.add_bar(f"bar{i}") for i in range(8)]
    creds = [db.add_credentials(bar, active=False) for bar in bars]
    done = threading.Event()
    gaps: list[tuple[int, int]] = []
    seen: list[int] = []

    def poller() -> None:
        last = 0
        with db.connect() as conn:
            while not done.is_set():
                rows = conn.execute("SELECT event_id FROM mpesa_sync.status_events"
                                    " WHERE event_id > %s ORDER BY event_id", (last,)).fetchall()
                for (event_id,) in rows:
                    seen.append(event_id)
                    last = event_id

    def flipper(cred: uuid.UUID) -> None:
        with db.connect() as conn:
            for _ in range(40):
                conn.execute("UPDATE mpesa_credentials SET is_active = NOT is_active WHERE id = %s",
                             (cred,))

    poll = threading.Thread(target=poller)
    poll.start()
    flippers = [threading.Thread(target=flipper, args=(c,)) for c in creds]
    for t in flippers:
        t.start()
    for t in flippers:
        t.join()
    done.set()
    poll.join()
    all_ids = [e["event_id"] for e in db.events()]
    assert len(all_ids) == 8 * 40
    # What the poller saw, in the order it saw it, is a prefix-closed run of
    # the committed ids: nothing skipped, nothing out of order.
    assert seen == all_ids[: len(seen)]
    assert gaps == []
