"""The relay over HTTP: Server-Sent Events, payment options, health, the page.

Every SSE client is a subscription on the one :class:`~mpesa_sync.relay.listener.Relay`
(no database connection per client); replays and payment options go through
a small connection pool.

* ``GET /events[?bar_id=UUID]``: Server-Sent Events (see :mod:`mpesa_sync.relay.sse`).
* ``GET /bars/{bar_id}/payment-options``: the row of ``mpesa_sync.payment_options``.
* ``GET /healthz``: whether the LISTEN connection is up, and the relay's position.
* ``GET /metrics``: Prometheus' text format (see :mod:`mpesa_sync.relay.metrics`).
* ``GET /?bar_id=UUID``: the customer's page (``mpesa_sync/relay/static/``).

The first two are what a customer's browser calls, usually from the app's
own origin: they send CORS headers to the origins given (``--allow-origin``)
and to no other. Errors are JSON: ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mpesa_sync import db
from mpesa_sync.errors import first_line
from mpesa_sync.queries import query
from mpesa_sync.relay.listener import Relay
from mpesa_sync.relay.metrics import CONTENT_TYPE, RelayMetrics
from mpesa_sync.relay.sse import EventStream, heartbeat, parse_bar_id

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
POOL_APPLICATION_NAME = "mpesa-sync-relay-http"
HEARTBEAT_SECONDS = 15.0


def create_app(
    relay: Relay,
    dsn: str,
    *,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    pool_size: int = 4,
    allow_origins: Collection[str] = (),
    max_clients: int | None = None,
) -> Starlette:
    """The ASGI app for ``relay``; its lifespan opens and closes the query pool.

    ``allow_origins``: the origins whose pages may read /events and payment
    options (CORS); none by default. ``max_clients``: the most SSE streams
    open at once (None: no cap).
    """

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
        app.state.metrics = RelayMetrics(relay)
        ticker = asyncio.create_task(heartbeat(relay, heartbeat_seconds))
        try:
            yield
        finally:
            ticker.cancel()
            await pool.close()

    app = Starlette(
        routes=[
            Route("/", _page),
            Route("/events", EventStream(max_clients)),
            Route("/bars/{bar_id}/payment-options", _payment_options),
            Route("/healthz", _healthz),
            Route("/metrics", _metrics),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=[Middleware(Cors, origins=frozenset(allow_origins))] if allow_origins else [],
        exception_handlers={
            HTTPException: _http_error,
            PoolTimeout: _database_error,
            psycopg.OperationalError: _database_error,
        },
        lifespan=lifespan,
    )
    app.state.relay = relay
    return app


class Cors:
    """CORS on the routes a customer's browser calls, for the given origins only.

    An allowed origin gets ``Access-Control-Allow-Origin`` on every response
    of those routes, errors included (so a page can read why), and an answer
    to its preflight. Any other origin gets no CORS header, and its browser
    refuses the response to the page. Other routes never send CORS headers.
    """

    PATHS = re.compile(r"/events|/bars/[^/]+/payment-options")
    PREFLIGHT_HEADERS = "Last-Event-ID, Cache-Control"

    def __init__(self, app: ASGIApp, origins: frozenset[str]) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.PATHS.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        allowed = origin in self.origins
        if allowed and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            preflight = Response(
                status_code=204,
                headers={
                    "Access-Control-Allow-Origin": str(origin),
                    "Access-Control-Allow-Methods": "GET",
                    "Access-Control-Allow-Headers": self.PREFLIGHT_HEADERS,
                    "Access-Control-Max-Age": "600",
                    "Vary": "Origin",
                },
            )
            await preflight(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                response_headers.add_vary_header("Origin")
                if allowed:
                    response_headers["Access-Control-Allow-Origin"] = str(origin)
            await send(message)

        await self.app(scope, receive, send_with_cors)


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
        "generation": str(relay.generation),
        "subscribers": relay.subscribers,
    }
    return JSONResponse(body, status_code=200 if relay.connected else 503)


async def _metrics(request: Request) -> Response:
    metrics: RelayMetrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE)


async def _page(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


# -- errors -------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _database_error(request: Request, exc: Exception) -> Response:
    logger.warning(
        "request failed: database unavailable (%s)",
        first_line(exc),
        extra={"action": "http_database_unavailable"},
    )
    return JSONResponse({"error": "database unavailable"}, status_code=503)
