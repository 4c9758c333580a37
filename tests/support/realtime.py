"""Supabase Realtime for tests on plain PostgreSQL: the stand-in schema
(realtime_standin.sql), made by the superuser as Supabase's admin makes it,
and reading what the sink sent.

The sink is enabled as on Supabase by the table owner who is no superuser:
the suite's managed-host owner (``db.dsn`` when ``db.role == "owner"``), to
whom the stand-in gives what Supabase gives ``postgres`` on Realtime.
"""

from __future__ import annotations

from typing import Any

from mpesa_sync.resources import resource_dir
from tests.support.database import Database

STANDIN_SQL = resource_dir("sql") / "dev" / "realtime_standin.sql"


def install_standin(db: Database) -> None:
    """Realtime's schema as Supabase leaves it, in ``db`` (as the superuser)."""
    with db.admin_connect() as conn:
        conn.execute(STANDIN_SQL.read_text())


def messages(db: Database) -> list[dict[str, Any]]:
    """Every broadcast row in realtime.messages, in event id order."""
    return db.query(
        """SELECT topic, event, private, extension, payload
           FROM realtime.messages
           ORDER BY (payload ->> 'event_id')::bigint"""
    )
