"""Broadcast from the database for Supabase Realtime: turn the sink on and off.

The SQL is ``sql/optional/realtime_enable.sql`` and ``realtime_disable.sql``;
this module checks what the sink needs before it runs the first, runs each in
one transaction, and reads the sink's state for ``status``
(docs/supabase.md#live-status-in-the-customer-app).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

from mpesa_sync import db
from mpesa_sync.errors import RealtimeRightMissing, RealtimeUnavailable, first_line
from mpesa_sync.queries import query
from mpesa_sync.resources import resource_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RealtimeStatus:
    """The broadcast sink in one database.

    ``enabled``: the sink's trigger is on. ``topics``: ``private`` or
    ``public`` while enabled. ``failures``: statements whose sends failed since
    it was enabled, ``events_lost`` the events they did not send.
    """

    enabled: bool
    topics: str | None
    policies: int
    state_call: bool
    failures: int = 0
    events_lost: int = 0
    last_sqlstate: str | None = None
    last_failed_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_failed_at"] = self.last_failed_at.isoformat() if self.last_failed_at else None
        return data


def _sql(name: str) -> str:
    return (resource_dir("sql") / "optional" / name).read_text()


def sink_status(conn: psycopg.Connection[Any]) -> RealtimeStatus:
    """The sink's state, read on ``conn`` (nothing enabled is a state, not an error)."""
    row = conn.execute(query("realtime_sink_status")).fetchone()
    assert row is not None
    sink, topics, policies, state_call, counters = row
    status = RealtimeStatus(bool(sink), topics if sink else None, int(policies), bool(state_call))
    if counters:
        failures = conn.execute(query("realtime_sink_failures")).fetchone()
        if failures is not None:
            status = RealtimeStatus(
                status.enabled, status.topics, status.policies, status.state_call, *failures
            )
    return status


def enable(dsn: str, *, public: bool = False) -> RealtimeStatus:
    """Turn the sink on (again), with private topics unless ``public``.

    Raises RealtimeUnavailable on a database without realtime.send, and
    RealtimeRightMissing, naming the right, when the role may not use
    Realtime as the sink does; in both cases nothing is changed.
    """
    with db.connection(dsn) as conn:
        db.require_schema(conn, event_log=True)
        role = _check_prerequisites(conn)
        conn.execute(query("realtime_set_topics"), {"topics": "public" if public else "private"})
        try:
            with conn.transaction():
                conn.execute(_sql("realtime_enable.sql"))
        except psycopg.errors.DuplicateSchema as exc:
            raise RealtimeRightMissing(
                f"role {role} may not use schema mpesa_sync_live ({first_line(exc)}); "
                "drop it or have its owner enable the sink; nothing was changed"
            ) from exc
        except psycopg.errors.InsufficientPrivilege as exc:
            raise RealtimeRightMissing(
                f"role {role} may not create policies on realtime.messages "
                f"({first_line(exc)}); it must own the table, be a member of its owner, or be "
                "allowed by Supabase's supautils policy_grants; nothing was changed"
            ) from exc
        try:
            with conn.transaction(force_rollback=True):
                conn.execute(query("realtime_probe_insert"))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise RealtimeRightMissing(
                f"role {role} may not insert broadcasts into realtime.messages "
                f"({first_line(exc)}); nothing was changed"
            ) from exc
        except psycopg.Error as exc:
            raise RealtimeUnavailable(
                f"a test insert into realtime.messages failed ({first_line(exc)}); "
                "nothing was changed"
            ) from exc
        status = sink_status(conn)
    logger.info(
        "realtime broadcast enabled (%s topics)", status.topics, extra={"action": "realtime_enable"}
    )
    return status


def _check_prerequisites(conn: psycopg.Connection[Any]) -> str:
    """The current role's name, once it has all the sink needs of Realtime."""
    row = conn.execute(query("realtime_prerequisites")).fetchone()
    assert row is not None
    has_schema, usage, has_send, send_execute, has_messages, insert, role = row
    if not has_schema:
        raise RealtimeUnavailable(
            "the database has no realtime schema (Supabase Realtime); nothing was changed"
        )
    if not usage:
        raise RealtimeRightMissing(
            f"role {role} lacks USAGE on schema realtime; nothing was changed"
        )
    if not has_send or not has_messages:
        missing = "realtime.messages" if has_send else "realtime.send(jsonb, text, text, boolean)"
        raise RealtimeUnavailable(
            f"the database has no {missing} (Supabase Realtime); nothing was changed"
        )
    if not send_execute:
        raise RealtimeRightMissing(
            f"role {role} lacks EXECUTE on realtime.send(jsonb, text, text, boolean); "
            "nothing was changed"
        )
    if not insert:
        raise RealtimeRightMissing(
            f"role {role} lacks INSERT on realtime.messages (realtime.send inserts as the "
            "sink's owner); nothing was changed"
        )
    return str(role)


def disable(dsn: str) -> bool:
    """Remove the sink, its policies and the state call; returns whether
    anything was there. Idempotent."""
    with db.connection(dsn) as conn:
        db.require_schema(conn)
        before = sink_status(conn)
        disable_in(conn)
    was_on = before.enabled or bool(before.policies) or before.state_call
    if was_on:
        logger.info("realtime broadcast disabled", extra={"action": "realtime_disable"})
    return was_on


def disable_in(conn: psycopg.Connection[Any]) -> None:
    """Run the disable SQL in ``conn``'s current transaction (rollback calls it)."""
    conn.execute(_sql("realtime_disable.sql"))
