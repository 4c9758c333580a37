"""Refuse a transaction-mode pooler where a command needs a session.

``migrate`` and ``rollback`` hand the database to yoyo, which sets its
``search_path`` for the session and spreads one migration over several
statements; the relay LISTENs. Through a transaction-mode pooler (PgBouncer's
``pool_mode = transaction``, Supabase's Supavisor on port 6543) each
transaction may run on another server connection, so these half-work: a
migration applied in part, a ``search_path`` left on a server connection
that the next client of the pool then uses, a LISTEN that hears nothing.
:func:`require_session` finds out before anything is changed.

How:

* A TCP connection whose peer, as the server sees it, is our own socket
  reaches the server directly: nothing more to ask.
* Otherwise something stands between (a pooler, a proxy, NAT), and a probe
  asks whether it keeps our session. Connection A sets a session setting to
  a random token. Connection B, in a transaction and out of one, must never
  see it (it would, given A's server connection); and A must see it every
  time, on the same backend (it would not, moved to another). A direct or
  session-pooled connection passes every check of every round; through a
  transaction pooler one of them fails almost at once (PgBouncer hands the
  most recently freed server connection to the next client, and under
  traffic A moves), and each further check is another chance to catch it.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Any

from mpesa_sync import db
from mpesa_sync.errors import SessionRequired
from mpesa_sync.queries import query

_ROUNDS = 8


def require_session(dsn: str, command: str) -> None:
    """Raise SessionRequired when ``dsn`` leads to a transaction-mode pooler."""
    with db.connection(dsn, autocommit=True) as a:
        if _direct(a):
            return
        with db.connection(dsn, autocommit=True) as b:
            for _ in range(_ROUNDS):
                if not _same_session(a, b):
                    raise SessionRequired(
                        f"{db.describe(dsn)} is reached through a transaction-mode pooler "
                        f"(PgBouncer pool_mode=transaction, Supabase port 6543), and "
                        f"`{command}` needs a session of its own; use the direct address or a "
                        "session-mode pooler (Supabase: port 5432); nothing was changed"
                    )


def _direct(conn: Any) -> bool:
    """Whether the server's peer on this connection is our own TCP socket."""
    peer_host, peer_port = conn.execute(query("session_peer")).fetchone()
    if peer_port is None:  # a Unix socket, ours or a pooler's: cannot tell
        return False
    # a duplicate of the driver's socket, whose family Python reads from it
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as ours:
        if ours.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        host, port = ours.getsockname()[:2]
    return bool(port == peer_port and _same_address(host, str(peer_host)))


def _same_address(ours: str, theirs: str) -> bool:
    return ours.removeprefix("::ffff:") == theirs.removeprefix("::ffff:")


def _same_session(a: Any, b: Any) -> bool:
    token = secrets.token_hex(8)
    _, pid = a.execute(query("session_probe_set"), {"token": token}).fetchone()

    def a_kept() -> bool:
        seen, backend = a.execute(query("session_probe_read")).fetchone()
        return bool(seen == token and backend == pid)

    def b_apart() -> bool:
        seen, _ = b.execute(query("session_probe_read")).fetchone()
        return bool(seen != token)

    for _ in range(2):
        with b.transaction():
            if not (b_apart() and a_kept()):
                return False
        if not (a_kept() and b_apart()):
            return False
    return True
