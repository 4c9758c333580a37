"""Supabase Realtime for tests on plain PostgreSQL: the stand-in schema
(realtime_standin.sql), a sink owner who is no superuser, and reading what
the sink sent."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg import conninfo, sql

from mpesa_sync.resources import resource_dir
from tests.support.database import Database

STANDIN_SQL = resource_dir("sql") / "dev" / "realtime_standin.sql"


def install_standin(db: Database) -> None:
    """Realtime's schema as Supabase leaves it, in ``db`` (as the superuser)."""
    db.execute(STANDIN_SQL.read_text())


@contextmanager
def sink_owner(
    db: Database, *, policy_rights: bool = True, insert_right: bool = True
) -> Iterator[str]:
    """A DSN for a LOGIN role that is no superuser and holds what Supabase's
    ``postgres`` holds: our tables' rights (here by membership in the role that
    ran the migrations), and on Realtime USAGE, SELECT/INSERT/UPDATE on
    realtime.messages (unless ``insert_right`` is false) and the right to make
    policies there (here by membership in the table's owner, which
    ``policy_rights`` = false leaves out). Dropped afterwards, with what it owns.
    """
    name = f"mpesa_owner_{uuid.uuid4().hex[:10]}"
    role = sql.Identifier(name)
    with db.connect() as conn:
        superuser = conn.info.user
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(role))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(superuser), role))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA realtime TO {}").format(role))
        conn.execute(sql.SQL("GRANT SELECT, UPDATE ON realtime.messages TO {}").format(role))
        if insert_right:
            conn.execute(sql.SQL("GRANT INSERT ON realtime.messages TO {}").format(role))
        if policy_rights:
            conn.execute(sql.SQL("GRANT supabase_realtime_admin TO {}").format(role))
    try:
        yield conninfo.make_conninfo(db.dsn, user=name)
    finally:
        with db.connect() as conn:
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(role))
            conn.execute(sql.SQL("DROP ROLE {}").format(role))


def messages(db: Database) -> list[dict[str, Any]]:
    """Every broadcast row in realtime.messages, in event id order."""
    return db.query(
        """SELECT topic, event, private, extension, payload
           FROM realtime.messages
           ORDER BY (payload ->> 'event_id')::bigint"""
    )
