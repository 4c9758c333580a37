"""The relay over HTTP: Server-Sent Events, payment options, health, the page.

Every SSE client is a subscription on the one :class:`~mpesa_sync.relay.Relay`
(no database connection per client); replays and payment options go through
a small connection pool.

* ``GET /events[?bar_id=UUID]``: ``id:`` is the event_id, ``data:`` the JSON.
  A ``Last-Event-ID`` header replays the missed events from the table, then
  the stream goes live with no gap and no repeat. A comment line every
  ``heartbeat`` seconds keeps proxies from closing an idle stream. A client
  that falls too far behind is disconnected; its EventSource reconnects with
  Last-Event-ID and catches up from the table.
* ``GET /bars/{bar_id}/payment-options``: the row of ``mpesa_sync.payment_options``.
* ``GET /healthz``: whether the LISTEN connection is up, and the last event id.
* ``GET /?bar_id=UUID``: the customer's page (``mpesa_sync/static/``).

Errors are JSON: ``{"error": "..."}``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mpesa_sync import db
from mpesa_sync.queries import query
from mpesa_sync.relay import PAGE_SIZE, Relay, Subscription, SubscriptionLagged
from mpesa_sync.relay_events import StatusEvent

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
POOL_APPLICATION_NAME = "mpesa-sync-relay-http"
HEARTBEAT_SECONDS = 15.0
_EVENT_ID = re.compile(r"\d{1,19}")
# An EventSource waits this long before it reconnects after the stream ends.
_RETRY_FRAME = b"retry: 1000\n\n"
_KEEPALIVE_FRAME = b": keepalive\n\n"
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def create_app(
    relay: Relay, dsn: str, *, heartbeat: float = HEARTBEAT_SECONDS, pool_size: int = 4
) -> Starlette:
    """The ASGI app for ``relay``; its lifespan opens and closes the query pool."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            kwargs=db.connect_kwargs(autocommit=True, application_name=POOL_APPLICATION_NAME),
            timeout=5.0,  # a request waits at most this long for a connection, then 503
            open=False,
        )
        # wait=False: a database that is down now must not stop the HTTP
        # relay from starting; requests get 503 until the pool connects.
        await pool.open(wait=False)
        app.state.pool = pool
        try:
            yield
        finally:
            await pool.close()

    app = Starlette(
        routes=[
            Route("/", _page),
            Route("/events", _events),
            Route("/bars/{bar_id}/payment-options", _payment_options),
            Route("/healthz", _healthz),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        exception_handlers={
            HTTPException: _http_error,
            PoolTimeout: _database_error,
            psycopg.OperationalError: _database_error,
        },
        lifespan=lifespan,
    )
    app.state.relay = relay
    app.state.heartbeat = heartbeat
    return app


# -- routes ---------------------------------------------------------------------


async def _events(request: Request) -> Response:
    relay: Relay = request.app.state.relay
    bar_id = _parse_bar_id(request.query_params.get("bar_id"))
    last = _parse_last_event_id(request.headers.get("last-event-id"))
    sub = relay.subscribe(bar_id=bar_id, after=last)
    try:
        # The first page of a replay is read before the response starts, so
        # that a database failure can still be answered with 503.
        first: list[StatusEvent] = []
        if last is not None and last < sub.joined_at:
            first = await _replay_page(request.app.state.pool, bar_id, last, sub.joined_at)
    except BaseException:
        sub.close()
        raise
    stream = _stream(request.app.state.pool, sub, last, first, request.app.state.heartbeat)
    return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)


async def _payment_options(request: Request) -> Response:
    bar_id = _parse_bar_id(request.path_params["bar_id"])
    async with request.app.state.pool.connection() as conn:
        cur = await conn.execute(query("relay_payment_options"), {"bar_id": bar_id})
        row = await cur.fetchone()
    if row is None:
        raise HTTPException(404, f"no bar {bar_id}")
    bar, available, environment, shortcode = row
    return JSONResponse(
        {
            "bar_id": str(bar),
            "mpesa_available": available,
            "environment": environment,
            "business_shortcode": shortcode,
        },
        headers={"Cache-Control": "no-store"},
    )


async def _healthz(request: Request) -> Response:
    relay: Relay = request.app.state.relay
    body = {
        "listening": relay.connected,
        "last_event_id": relay.last_event_id,
        "subscribers": relay.subscribers,
    }
    return JSONResponse(body, status_code=200 if relay.connected else 503)


async def _page(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


# -- the SSE stream -----------------------------------------------------------------


async def _stream(
    pool: AsyncConnectionPool[Any],
    sub: Subscription,
    last: int | None,
    first: list[StatusEvent],
    heartbeat: float,
) -> AsyncIterator[bytes]:
    try:
        yield _RETRY_FRAME
        # Replay (last, joined_at] from the table; the subscription holds
        # what arrives meanwhile and skips what the replay already sent.
        page = first
        while page:
            yield b"".join(event.sse for event in page)
            after = page[-1].event_id
            if len(page) < PAGE_SIZE or after >= sub.joined_at:
                break
            page = await _replay_page(pool, sub.bar_id, after, sub.joined_at)
        while True:
            events = await sub.next(timeout=heartbeat)
            if events is None:  # the relay is stopping
                return
            yield b"".join(event.sse for event in events) if events else _KEEPALIVE_FRAME
    except SubscriptionLagged:
        logger.info(
            "dropped an SSE client that fell behind; it resumes with Last-Event-ID",
            extra={"action": "sse_client_lagged"},
        )
    except (PoolTimeout, psycopg.OperationalError) as exc:
        logger.warning(
            "SSE replay failed (%s); the client resumes with Last-Event-ID",
            db.first_line(exc),
            extra={"action": "sse_replay_failed"},
        )
    finally:
        sub.close()


async def _replay_page(
    pool: AsyncConnectionPool[Any], bar_id: UUID | None, after: int, upto: int
) -> list[StatusEvent]:
    params: dict[str, Any] = {"after": after, "upto": upto, "limit": PAGE_SIZE}
    name = "relay_events_between"
    if bar_id is not None:
        name, params["bar_id"] = "relay_bar_events_between", bar_id
    async with pool.connection() as conn:
        cur = await conn.execute(query(name), params)
        rows = await cur.fetchall()
    return [StatusEvent.from_row(row) for row in rows]


# -- input and errors ---------------------------------------------------------------


def _parse_bar_id(value: str | None) -> UUID | None:
    if value is None:
        return None
    try:
        return UUID(value)
    except ValueError:
        raise HTTPException(400, f"malformed bar id {value[:64]!r}: expected a UUID") from None


def _parse_last_event_id(value: str | None) -> int | None:
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if not _EVENT_ID.fullmatch(value) or int(value) > 2**63 - 1:
        raise HTTPException(
            400, f"malformed Last-Event-ID {value[:64]!r}: expected a non-negative event id"
        )
    return int(value)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


async def _database_error(request: Request, exc: Exception) -> Response:
    logger.warning(
        "request failed: database unavailable (%s)",
        db.first_line(exc),
        extra={"action": "http_database_unavailable"},
    )
    return JSONResponse({"error": "database unavailable"}, status_code=503)
