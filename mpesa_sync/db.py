"""Connections, and the one place where driver errors become ours."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import conninfo

from mpesa_sync.errors import DatabaseUnavailable, SchemaNotInstalled
from mpesa_sync.queries import query

logger = logging.getLogger(__name__)

# Keepalives notice a dead peer within about a minute even on an idle
# connection, which matters for the long-lived LISTEN connection.
_CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "application_name": "mpesa-sync",
}


def connect_kwargs(**kwargs: Any) -> dict[str, Any]:
    """Our connection defaults (keepalives, timeouts) updated with ``kwargs``.

    For the places that connect without :func:`connect`: pools.
    """
    return {**_CONNECT_DEFAULTS, **kwargs}


def connect(dsn: str, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a connection, or raise DatabaseUnavailable with one clear line."""
    with _connect_errors(dsn):
        return psycopg.connect(dsn, autocommit=autocommit, **connect_kwargs(**kwargs))


async def connect_async(
    dsn: str, *, autocommit: bool = False, **kwargs: Any
) -> psycopg.AsyncConnection[Any]:
    """:func:`connect` for asyncio (the relay)."""
    with _connect_errors(dsn):
        return await psycopg.AsyncConnection.connect(
            dsn, autocommit=autocommit, **connect_kwargs(**kwargs)
        )


@contextmanager
def _connect_errors(dsn: str) -> Iterator[None]:
    try:
        yield
    except psycopg.ProgrammingError as exc:  # a DSN that does not parse
        raise DatabaseUnavailable(f"invalid DSN: {first_line(exc)}") from None
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {describe(dsn)}: {first_line(exc)}") from None


@contextmanager
def connection(dsn: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
    """A connection that is closed on exit (and committed unless autocommit)."""
    conn = connect(dsn, autocommit=autocommit)
    with conn:
        yield conn


def describe(dsn: str) -> str:
    """The DSN's host, port and database, never its password."""
    try:
        info = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "the database"
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    dbname = info.get("dbname") or info.get("user") or "postgres"
    return f"database {dbname!r} at {host}:{port}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def set_lock_timeout(conn: psycopg.Connection[Any], seconds: float) -> None:
    """``SET LOCAL lock_timeout`` for the current transaction, in whole milliseconds."""
    conn.execute(query("set_lock_timeout"), {"lock_timeout": f"{max(1, round(seconds * 1000))}ms"})


def require_schema(conn: psycopg.Connection[Any]) -> None:
    """Raise SchemaNotInstalled unless the migrations have been applied."""
    row = conn.execute(query("schema_installed")).fetchone()
    if not row or not row[0]:
        raise SchemaNotInstalled()
