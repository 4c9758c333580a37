"""What the sync does beside a write: no subtransaction, and rows read in
proportion to the rows a statement changes.

Counted, not timed. Subtransactions are counted while the writer's
transaction is still open, two ways: by the transaction ids handed out
since the transaction's own (a subtransaction that writes gets the next
one; the test's server runs nothing else), on every server; and on
PostgreSQL 16+ by the server's own count of the backend's subtransactions,
``pg_stat_get_backend_subxact()``, read from a second connection. A control
shows both see savepoints. Rows read come from the database's row
counters (``tup_returned + tup_fetched``), flushed around the statement with
``pg_stat_force_next_flush()``, less what the same statement reads in a
database without mpesa-sync.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from tests.support.database import Database, fresh_database, templates
from tests.support.servers import Server

WRITES = 1_000

# Bars with one sandbox credential each (half of them active), and every
# fourth bar a production row as well, loaded behind the triggers' back as
# the superuser and consistent by construction.
LOAD = """
    SET session_replication_role = replica;
    INSERT INTO bars (id, name, mpesa_enabled)
    SELECT md5(i::text)::uuid, 'bar ' || i, i % 2 = 0 OR i % 4 = 1
    FROM generate_series(1, {n}) AS i;
    INSERT INTO mpesa_credentials (tenant_id, environment, business_shortcode,
                                   consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)
    SELECT md5(i::text)::uuid, 'sandbox', '174379', 'k'::bytea, 's'::bytea, 'p'::bytea, i % 2 = 0
    FROM generate_series(1, {n}) AS i
    UNION ALL
    SELECT md5(i::text)::uuid, 'production', '600126', 'k'::bytea, 's'::bytea, 'p'::bytea, true
    FROM generate_series(1, {n}) AS i
    WHERE i % 4 = 1;
    RESET session_replication_role;
"""

TOGGLE_ROW = "UPDATE mpesa_credentials SET is_active = NOT is_active WHERE id = %s"
FLIP_IDS = "UPDATE mpesa_credentials SET is_active = NOT is_active WHERE id = ANY (%s)"

INSERT_PRODUCTION = """
INSERT INTO mpesa_credentials (tenant_id, environment, business_shortcode,
                               consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)
SELECT id, 'production', '600126', 'k'::bytea, 's'::bytea, 'p'::bytea, true
FROM bars
WHERE id = ANY (%s)
ON CONFLICT DO NOTHING
"""
MOVE = "UPDATE mpesa_credentials SET tenant_id = %s WHERE id = %s"

SUBXACT_OF = """
SELECT s.subxact_count, s.subxact_overflowed
FROM pg_stat_get_backend_idset() AS b (id)
CROSS JOIN LATERAL pg_stat_get_backend_subxact(b.id) AS s
WHERE pg_stat_get_backend_pid(b.id) = %s
"""

ROWS_READ = """
SELECT tup_returned + tup_fetched
FROM pg_stat_database
WHERE datname = current_database()
"""

# The functions our triggers run on the host's tables and our own.
TRIGGER_FUNCTIONS = """
SELECT DISTINCT p.oid::regprocedure::text AS name, p.prosrc
FROM pg_trigger AS t
JOIN pg_proc AS p ON p.oid = t.tgfoid
JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = 'mpesa_sync'
  AND NOT t.tgisinternal
"""


# An exception handler (BEGIN ... EXCEPTION WHEN ...): each run of its block
# is a subtransaction. RAISE EXCEPTION is not one.
HANDLER = re.compile(r"\bEXCEPTION\s+WHEN\b", re.IGNORECASE)


def _load(db: Database, bars: int) -> None:
    with db.admin_connect() as conn:
        conn.execute(LOAD.format(n=bars))
        conn.execute("VACUUM ANALYZE bars, mpesa_credentials")


def _credentials(conn: psycopg.Connection[Any], limit: int) -> list[uuid.UUID]:
    rows = conn.execute(
        "SELECT id FROM mpesa_credentials WHERE environment = 'sandbox' ORDER BY id LIMIT %s",
        (limit,),
    )
    return [row[0] for row in rows]


def _subtransactions_since(conn: psycopg.Connection[Any], xid: int) -> int:
    """How many transaction ids were handed out after ``xid`` (the writer's
    transaction, or a previous probe), on a server where nothing else writes:
    the writer's subtransactions. A probe subtransaction inserts a row and
    reads its xmin, the next id, and is rolled back; returns the count and
    leaves the probe's own id as the next ``xid``."""
    conn.execute("SAVEPOINT probe")
    row = conn.execute(
        "INSERT INTO pg_temp.probe VALUES (1) RETURNING xmin::text::bigint"
    ).fetchone()
    conn.execute("ROLLBACK TO SAVEPOINT probe")
    conn.execute("RELEASE SAVEPOINT probe")
    assert row is not None
    return int(row[0])


def _server_count(server: Server, db: Database, pid: int) -> tuple[int, bool] | None:
    """PostgreSQL 16+: the server's own count of ``pid``'s subtransactions."""
    if server.version < 16:
        return None
    with db.connect() as watcher:
        row = watcher.execute(SUBXACT_OF, (pid,)).fetchone()
    assert row is not None, f"no backend {pid}"
    return int(row[0]), bool(row[1])


def test_no_trigger_function_opens_a_subtransaction(db: Database) -> None:
    """Every trigger path: no EXCEPTION block, the only way PL/pgSQL opens one."""
    functions = db.query(TRIGGER_FUNCTIONS)
    assert {f["name"] for f in functions} >= {
        "mpesa_sync.credentials_changed_v3()",
        "mpesa_sync.record_status_changes_v3()",
        "mpesa_sync.publish_status_events_v3()",
        "mpesa_sync.correct_bar_v1()",
    }
    with_handler = [f["name"] for f in functions if HANDLER.search(f["prosrc"])]
    assert with_handler == []


@pytest.mark.parametrize("isolation", ["read committed", "repeatable read", "serializable"])
def test_a_thousand_writes_in_one_transaction_open_no_subtransaction(
    server: Server, db: Database, isolation: str
) -> None:
    _load(db, 1_200)
    with db.connect(autocommit=False) as conn:
        credentials = _credentials(conn, 1_200)
        bars = [r[0] for r in conn.execute("SELECT id FROM bars ORDER BY id LIMIT 20")]
        conn.execute("CREATE TEMP TABLE probe (x int)")
        conn.commit()
        conn.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        pid = conn.info.backend_pid
        # single-row toggles, one bar each; the first gives the transaction its id
        for credential in credentials[:WRITES]:
            conn.execute(TOGGLE_ROW, (credential,))
        xid = conn.execute("SELECT pg_current_xact_id()::text::bigint % 4294967296").fetchone()
        assert xid is not None
        # many-row statements, direct writes, an insert, a move and a delete
        for chunk in range(0, 80, 20):
            conn.execute(FLIP_IDS, (credentials[chunk : chunk + 20],))
        for bar in bars[:10]:
            conn.execute("UPDATE bars SET mpesa_enabled = NOT mpesa_enabled WHERE id = %s", (bar,))
        conn.execute(INSERT_PRODUCTION, (bars[10:20],))
        new_bar = conn.execute("INSERT INTO bars (name) VALUES ('new') RETURNING id").fetchone()
        assert new_bar is not None
        conn.execute(MOVE, (new_bar[0], credentials[WRITES]))
        conn.execute("DELETE FROM mpesa_credentials WHERE id = %s", (credentials[WRITES + 1],))

        probe = _subtransactions_since(conn, xid[0])
        # ids after the transaction's own: only the probe's, none of ours
        assert probe == xid[0] + 1
        assert _server_count(server, db, pid) in (None, (0, False))

        # the control: the same counts see savepoints that wrote
        for credential in credentials[WRITES + 2 : WRITES + 5]:
            conn.execute("SAVEPOINT s")
            conn.execute(TOGGLE_ROW, (credential,))
            conn.execute("RELEASE SAVEPOINT s")
        assert _subtransactions_since(conn, probe) == probe + 4
        assert _server_count(server, db, pid) in (None, (3, False))
        conn.commit()
    assert db.drift() == []


@contextmanager
def _sized(server: Server, db: Database, bars: int, *, installed: bool) -> Iterator[Database]:
    template = templates(db.role)[1 if installed else 0]
    with fresh_database(server, template, prefix="rows", role=db.role) as sized:
        _load(sized, bars)
        yield sized


def _rows_read(conn: psycopg.Connection[Any], statement: str, params: Any) -> int:
    """Rows the database read for ``statement`` (autocommit), its triggers and
    its commit included, from the counters flushed before and after it."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    before = conn.execute(ROWS_READ).fetchone()
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute(statement, params)
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")  # the flush happens as this backend goes idle
    after = conn.execute(ROWS_READ).fetchone()
    assert before is not None and after is not None
    return int(after[0]) - int(before[0])


def _flip_rows_read(db: Database, rows: int) -> int:
    """Rows read by a flip of ``rows`` sandbox credentials (each changes its
    bar's status, but for the bars with an active production row), flipped
    once before so that caches and plans are warm."""
    with db.connect() as conn:
        credentials = _credentials(conn, rows)
        conn.execute(FLIP_IDS, (credentials,))
        return _rows_read(conn, FLIP_IDS, (credentials,))


def test_a_thousand_row_flip_reads_as_many_rows_at_1k_and_100k_bars(
    server: Server, db: Database
) -> None:
    synced = {}
    for bars in (1_000, 100_000):
        with _sized(server, db, bars, installed=True) as ours:
            with_sync = _flip_rows_read(ours, 1_000)
            assert ours.drift() == []
        with _sized(server, db, bars, installed=False) as bare:
            without = _flip_rows_read(bare, 1_000)
        synced[bars] = with_sync - without
    print(f"\n  rows the sync read for a 1,000-row flip: {synced}")
    # a few rows per changed row, never the table
    assert 0 < synced[1_000] <= 20 * 1_000, synced
    assert synced[100_000] <= 2 * synced[1_000], synced
