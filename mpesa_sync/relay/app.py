"""The relay over HTTP: Server-Sent Events, payment options, health, the page.

Every SSE client is a subscription on the one :class:`~mpesa_sync.relay.listener.Relay`
(no database connection per client); replays and payment options go through
a small connection pool.

* ``GET /events[?bar_id=UUID]``: Server-Sent Events (see :mod:`mpesa_sync.relay.sse`).
* ``GET /bars/{bar_id}/payment-options``: the row of ``mpesa_sync.payment_options``.
* ``GET /healthz``: whether the LISTEN connection is up, and the last event id.
* ``GET /?bar_id=UUID``: the customer's page (``mpesa_sync/relay/static/``).

Errors are JSON: ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mpesa_sync import db
from mpesa_sync.errors import first_line
from mpesa_sync.queries import query
from mpesa_sync.relay.listener import Relay
from mpesa_sync.relay.sse import EventStream, heartbeat, parse_bar_id

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
POOL_APPLICATION_NAME = "mpesa-sync-relay-http"
HEARTBEAT_SECONDS = 15.0


def create_app(
    relay: Relay, dsn: str, *, heartbeat_seconds: float = HEARTBEAT_SECONDS, pool_size: int = 4
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
        ticker = asyncio.create_task(heartbeat(relay, heartbeat_seconds))
        try:
            yield
        finally:
            ticker.cancel()
            await pool.close()

    app = Starlette(
        routes=[
            Route("/", _page),
            Route("/events", EventStream()),
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
    return app


# -- routes ---------------------------------------------------------------------


async def _payment_options(request: Request) -> Response:
    bar_id = parse_bar_id(request.path_params["bar_id"])
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


# -- errors -------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


async def _database_error(request: Request, exc: Exception) -> Response:
    logger.warning(
        "request failed: database unavailable (%s)",
        first_line(exc),
        extra={"action": "http_database_unavailable"},
    )
    return JSONResponse({"error": "database unavailable"}, status_code=503)
