"""A single-row toggle reads its own bar's rows, whatever the table sizes.

Deterministic, not timed: auto_explain reports the plan and the buffers of
every statement a toggle runs, its triggers and the publish at commit
included, after enough toggles in the session for PostgreSQL to have settled
on cached generic plans. At 1,000 and at 50,000 bars the toggle must touch
about the same number of buffers, and no statement may scan a whole table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from mpesa_sync import realtime
from tests.support.database import Database, fresh_database, templates
from tests.support.realtime import install_standin
from tests.support.writers import TOGGLE

# auto_explain is loaded by the superuser (a managed host's provider allows it
# or not); a plan does not depend on who runs the statement.
pytestmark = pytest.mark.roles("superuser")

# Bars with one credential each, loaded behind the triggers' back (replica
# mode, as the superuser) and made consistent by hand: faster than syncing
# 50,000 bars.
LOAD = """
    SET session_replication_role = replica;
    INSERT INTO bars (id, name, mpesa_enabled)
    SELECT md5(i::text)::uuid, 'bar ' || i, i % 2 = 0
    FROM generate_series(1, {n}) AS i;
    INSERT INTO mpesa_credentials (tenant_id, environment, business_shortcode,
                                   consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)
    SELECT md5(i::text)::uuid, 'sandbox', '174379', 'k', 's', 'p', i % 2 = 0
    FROM generate_series(1, {n}) AS i;
    RESET session_replication_role;
    ANALYZE bars, mpesa_credentials;
"""
WARM_UP = 12  # generic plans are cached after five executions of a statement

# A plan that scans one of these whole reads other bars' rows.
OUR_AND_HOST_TABLES = {"bars", "mpesa_credentials", "bar_write_tokens", "pending_changes"}


@dataclass
class ToggleCost:
    statements: int  # the toggle and every statement it ran
    scan_buffers: int  # buffers read by the scans that found rows
    index_lookups: int  # index descents (scan nodes times their loops)
    whole_table_scans: list[str]


def toggle_cost(db: Database, bars: int) -> ToggleCost:
    with db.admin_connect() as conn:
        conn.execute(LOAD.format(n=bars))
    with db.connect() as conn:
        targets = [
            r[0] for r in conn.execute("SELECT id FROM bars ORDER BY id LIMIT %s", (WARM_UP + 1,))
        ]
        for bar in targets[:WARM_UP]:
            conn.execute(TOGGLE, (bar,))
        plans = _explained(conn, TOGGLE, (targets[WARM_UP],))
    cost = ToggleCost(len(plans), 0, 0, [])
    for plan in plans:
        for node in _nodes(plan["Plan"]):
            kind = node["Node Type"]
            if kind == "Seq Scan" and node.get("Relation Name") in OUR_AND_HOST_TABLES:
                cost.whole_table_scans.append(node["Relation Name"])
            if kind in ("Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan"):
                cost.scan_buffers += node["Shared Hit Blocks"] + node["Shared Read Blocks"]
            if kind in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan"):
                cost.index_lookups += node["Actual Loops"]
    return cost


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def _explained(
    conn: psycopg.Connection[Any], statement: str, params: tuple[Any, ...]
) -> list[dict[str, Any]]:
    """auto_explain's JSON plans of ``statement`` and of everything it ran."""
    notices: list[str] = []
    conn.add_notice_handler(lambda notice: notices.append(notice.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    for setting, value in {
        "log_min_duration": "0",
        "log_analyze": "on",
        "log_buffers": "on",
        "log_timing": "off",
        "log_nested_statements": "on",
        "log_format": "json",
    }.items():
        conn.execute(f"SET auto_explain.{setting} = '{value}'")
    conn.execute("SET client_min_messages = log")
    conn.execute(statement, params)
    conn.execute("RESET client_min_messages")
    plans = []
    for notice in notices:
        if notice.startswith("duration:") and "plan:" in notice:
            plans.append(json.loads(notice.split("plan:", 1)[1]))
    return plans


def test_a_toggle_touches_the_same_buffers_at_1k_and_50k_bars(server: Any, db: Database) -> None:
    small = toggle_cost(db, 1_000)
    with fresh_database(server, templates(db.role)[1], prefix="large", role=db.role) as large_db:
        large = toggle_cost(large_db, 50_000)

    assert small.whole_table_scans == [] and large.whole_table_scans == []
    # the toggle, our trigger's five statements (rows, lock, rule, write,
    # staging) and the publish at commit
    assert small.statements == large.statements >= 7
    assert small.index_lookups == large.index_lookups
    # 50 times the bars costs at most one page more per index lookup (one
    # more level of B-tree), and never fewer pages at the smaller size
    assert small.scan_buffers <= large.scan_buffers, (small, large)
    assert large.scan_buffers <= small.scan_buffers + large.index_lookups, (small, large)


def test_no_statement_of_a_toggle_is_priced_for_jit(db: Database) -> None:
    """Our functions plan with enable_seqscan off; where a scan is the only
    way (a one-row table), PostgreSQL 15 to 17 price it at 10^10 and the
    statement crosses jit_above_cost: JIT-compiled on every call (30 ms a
    toggle, seen with the realtime sink). Every statement a toggle runs, the
    sink's included, must stay priced below it."""
    install_standin(db)
    realtime.enable(db.dsn)
    bar = db.add_bar()
    db.add_credentials(bar)
    with db.connect() as conn:
        jit_above = float(conn.execute("SHOW jit_above_cost").fetchone()[0])  # type: ignore[index]
        for _ in range(WARM_UP):
            conn.execute(TOGGLE, (bar,))
        plans = _explained(conn, TOGGLE, (bar,))
    priced = {" ".join(p["Query Text"].split()[:6]): p["Plan"]["Total Cost"] for p in plans}
    assert len(plans) >= 7
    assert all(cost < jit_above for cost in priced.values()), priced
