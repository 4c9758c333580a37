"""Connections, and the one place where driver errors become ours.

Library code talks to PostgreSQL through :func:`connection` (or
:func:`connect` / :func:`connect_async`), and a psycopg error that leaves
them comes out as an :mod:`mpesa_sync.errors` class with the driver's error
chained as its ``__cause__``:

- a DSN that does not parse: ConfigError;
- a server that cannot be reached, or a connection lost on the way:
  DatabaseUnavailable;
- any other refusal: DatabaseError, with its ``sqlstate``.

Two callers map driver errors themselves, on purpose: the settings API
(:mod:`mpesa_sync.credentials`, which must not chain an error that could
quote a secret) and the relay (which reconnects instead of failing).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg.rows import dict_row

from mpesa_sync.errors import (
    ConfigError,
    DatabaseError,
    DatabaseUnavailable,
    MpesaSyncError,
    SchemaNotInstalled,
    first_line,
    with_sqlstate,
)
from mpesa_sync.queries import query

# Keepalives notice a dead peer within about a minute even on an idle
# connection, which matters for the long-lived LISTEN connection. No
# server-side prepared statements: through a transaction-mode pooler the next
# execution may land on a server connection that never saw the PREPARE (or
# one where another client's statement has the same name).
_CONNECT_DEFAULTS: dict[str, Any] = {
    "prepare_threshold": None,
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
    """Open a connection, or raise ConfigError / DatabaseUnavailable with one clear line."""
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **connect_kwargs(**kwargs))
    except psycopg.Error as exc:
        raise connect_failed(dsn, exc) from exc


async def connect_async(
    dsn: str, *, autocommit: bool = False, **kwargs: Any
) -> psycopg.AsyncConnection[Any]:
    """:func:`connect` for asyncio (the relay)."""
    try:
        return await psycopg.AsyncConnection.connect(
            dsn, autocommit=autocommit, **connect_kwargs(**kwargs)
        )
    except psycopg.Error as exc:
        raise connect_failed(dsn, exc) from exc


@contextmanager
def connection(dsn: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
    """A connection that is closed on exit (and committed unless autocommit).

    A driver error inside the block, or at its commit, leaves as ours.
    """
    conn = connect(dsn, autocommit=autocommit)
    with translated(dsn), conn:
        yield conn


def fetch_one(
    conn: psycopg.Connection[Any], sql: str, params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The one row ``sql`` returns, by column name."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(sql, params).fetchone()
    assert row is not None, "the query returns one row"
    return row


@contextmanager
def translated(dsn: str) -> Iterator[None]:
    """Turn a psycopg error raised inside the block into ours, chaining it."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, dsn) from exc


def translate(exc: psycopg.Error, dsn: str) -> MpesaSyncError:
    """Our error for a driver error raised on an open connection to ``dsn``."""
    state = exc.sqlstate
    # No SQLSTATE: the driver lost the socket. 08: connection exceptions.
    # 57P0x: the server is shutting down or killed the backend.
    if state is None or state.startswith(("08", "57P0")):
        return DatabaseUnavailable(
            with_sqlstate(f"lost the connection to {describe(dsn)}: {first_line(exc)}", state)
        )
    return DatabaseError(with_sqlstate(f"database error: {first_line(exc)}", state), sqlstate=state)


def connect_failed(dsn: str, exc: psycopg.Error) -> MpesaSyncError:
    """Our error for a failed connect: the DSN does not parse, or the server cannot be reached."""
    if isinstance(exc, psycopg.ProgrammingError):
        return invalid_dsn(exc)
    return DatabaseUnavailable(f"cannot connect to {describe(dsn)}: {first_line(exc)}")


def invalid_dsn(exc: psycopg.Error) -> ConfigError:
    return ConfigError(f"invalid DSN: {first_line(exc)}")


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


# PostgreSQL's lock_timeout is a number of milliseconds in a C int.
MAX_LOCK_TIMEOUT = 2_147_483.647


def check_lock_timeout(seconds: float) -> float:
    """``seconds`` if PostgreSQL can take it as a lock timeout, else ConfigError."""
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_LOCK_TIMEOUT:
        raise ConfigError(
            f"lock timeout must be a number of seconds above 0 and at most "
            f"{MAX_LOCK_TIMEOUT:g}, not {seconds}"
        )
    return seconds


def set_lock_timeout(conn: psycopg.Connection[Any], seconds: float) -> None:
    """``SET LOCAL lock_timeout`` for the current transaction, in whole milliseconds."""
    check_lock_timeout(seconds)
    conn.execute(query("set_lock_timeout"), {"lock_timeout": f"{max(1, round(seconds * 1000))}ms"})


def schema_installed(conn: psycopg.Connection[Any], *, event_log: bool = False) -> bool:
    """Whether the migrations that create the sync functions have been applied
    (and, with ``event_log``, the event log's identity and retention, 0005)."""
    row = conn.execute(query("schema_installed")).fetchone()
    return _installed(row, event_log)


def require_schema(conn: psycopg.Connection[Any], *, event_log: bool = False) -> None:
    """Raise SchemaNotInstalled unless the migrations have been applied."""
    if not schema_installed(conn, event_log=event_log):
        raise _not_installed(event_log)


def require_sync_core_v2(conn: psycopg.Connection[Any]) -> None:
    """Raise SchemaNotInstalled unless 0004's sync core is there (reconcile calls it)."""
    row = conn.execute(query("sync_core_v2_installed")).fetchone()
    if not row or not row[0]:
        raise SchemaNotInstalled(
            "the mpesa_sync schema is older than this mpesa-sync (0004_mpesa_sync_v2 is "
            "not applied); run `mpesa-sync migrate` first"
        )


async def require_schema_async(
    conn: psycopg.AsyncConnection[Any], *, event_log: bool = False
) -> None:
    """:func:`require_schema` for asyncio (the relay's start)."""
    row = await (await conn.execute(query("schema_installed"))).fetchone()
    if not _installed(row, event_log):
        raise _not_installed(event_log)


def _installed(row: tuple[Any, ...] | None, event_log: bool) -> bool:
    return bool(row and row[0] and (row[1] or not event_log))


def _not_installed(event_log: bool) -> SchemaNotInstalled:
    if not event_log:
        return SchemaNotInstalled()
    return SchemaNotInstalled(
        "the mpesa_sync schema is not installed or not current (the event log of "
        "migration 0005 is missing); run `mpesa-sync migrate` first"
    )
