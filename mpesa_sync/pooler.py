"""Refuse a transaction-mode pooler where a command needs a session.

``migrate`` and ``rollback`` hand the database to yoyo, which sets its
``search_path`` for the session and spreads one migration over several
statements; the relay LISTENs. Through a transaction-mode pooler (PgBouncer's
``pool_mode = transaction``, Supabase's Supavisor on port 6543) each
transaction may run on another server connection, so these half-work: a
migration half applied, a LISTEN that hears nothing. :func:`require_session`
finds out before anything is changed.

How: connection A sets a session setting to a random token. Connection B,
inside a transaction, must not see it (a pooler gave B A's server
connection) and, while B holds its server connection, A must still see it
on the same backend (a pooler moved A). A direct or session-pooled
connection passes every round; a transaction pooler fails the first round
in practice (PgBouncer hands the most recently freed server connection to
the next client), and each further round is another chance to catch it
under traffic.
"""

from __future__ import annotations

import secrets
from typing import Any

from mpesa_sync import db
from mpesa_sync.errors import SessionRequired
from mpesa_sync.queries import query

_ROUNDS = 3


def require_session(dsn: str, command: str) -> None:
    """Raise SessionRequired when ``dsn`` leads to a transaction-mode pooler."""
    with db.connection(dsn, autocommit=True) as a, db.connection(dsn, autocommit=True) as b:
        for _ in range(_ROUNDS):
            if not _same_session(a, b):
                raise SessionRequired(
                    f"{db.describe(dsn)} is reached through a transaction-mode pooler "
                    f"(PgBouncer pool_mode=transaction, Supabase port 6543), and `{command}` "
                    "needs a session of its own; use the direct address or a session-mode "
                    "pooler (Supabase: port 5432); nothing was changed"
                )


def _same_session(a: Any, b: Any) -> bool:
    token = secrets.token_hex(8)
    _, pid = a.execute(query("session_probe_set"), {"token": token}).fetchone()
    with b.transaction():
        seen_by_b, _ = b.execute(query("session_probe_read")).fetchone()
        if seen_by_b == token:  # B was given A's server connection
            return False
        seen_by_a, pid_after = a.execute(query("session_probe_read")).fetchone()
    return bool(seen_by_a == token and pid_after == pid)
