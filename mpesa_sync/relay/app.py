"""The relay over HTTP: Server-Sent Events, payment options, health, the page.

Every SSE client is a client of the one fan-out (:mod:`.fanout`), fed by
the one :class:`~mpesa_sync.relay.listener.Relay` (no database connection
per client); replays and payment options go through a small connection pool.

* ``GET /events[?bar_id=UUID]``: Server-Sent Events (see :mod:`mpesa_sync.relay.sse`).
* ``GET /bars/{bar_id}/payment-options``: the row of ``mpesa_sync.payment_options``.
* ``GET /healthz``: whether the LISTEN connection is up, and the relay's position.
* ``GET /metrics``: Prometheus' text format (see :mod:`mpesa_sync.relay.metrics`).
* ``GET /?bar_id=UUID``: the customer's page (``mpesa_sync/relay/static/``).

The first two are what a customer's browser calls, usually from the app's
own origin: they send CORS headers to the origins given (``--allow-origin``)
and to no other. Errors are JSON: ``{"error": "..."}``.

These routes are plain functions on :mod:`.http`'s small server rather than
a web framework's: the stream needs the transport itself (the fan-out writes
to it directly), and the other routes are four GETs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from mpesa_sync import db
from mpesa_sync.errors import HttpError, first_line
from mpesa_sync.queries import query
from mpesa_sync.relay.fanout import Hub
from mpesa_sync.relay.http import HttpConnection, HttpServer, Request, Response
from mpesa_sync.relay.listener import Relay
from mpesa_sync.relay.metrics import CONTENT_TYPE, RelayMetrics
from mpesa_sync.relay.sse import EventStream, parse_bar_id

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
POOL_APPLICATION_NAME = "mpesa-sync-relay-http"
HEARTBEAT_SECONDS = 15.0
_STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}
_CUSTOMER_PATHS = re.compile(r"/events|/bars/[^/]+/payment-options")
_PREFLIGHT_HEADERS = "Last-Event-ID, Cache-Control"

Route = Callable[[Request], Awaitable[Response]]


class RelayApp:
    """The HTTP side of one relay: routes, the fan-out, the pool, keepalives.

    ``allow_origins``: the origins whose pages may read /events and payment
    options (CORS); none by default. ``max_clients``: the most SSE streams
    open at once (None: no cap).
    """

    def __init__(
        self,
        relay: Relay,
        dsn: str,
        *,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        pool_size: int = 4,
        allow_origins: Collection[str] = (),
        max_clients: int | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.relay = relay
        self.hub = Hub(max_unsent=relay.config.max_unsent, max_blocked=relay.config.max_blocked)
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            kwargs=db.connect_kwargs(autocommit=True, application_name=POOL_APPLICATION_NAME),
            timeout=5.0,  # a request waits at most this long for a connection, then 503
            open=False,
        )
        self.metrics = RelayMetrics(relay, self.hub, labels)
        self.heartbeat_seconds = heartbeat_seconds
        self.origins = frozenset(allow_origins)
        # With --workers: which worker answered, on every answer.
        self._worker = [("X-Relay-Worker", labels["worker"])] if labels else []
        self.events = EventStream(relay, self.hub, self.pool, max_clients=max_clients)
        self.routes: list[tuple[re.Pattern[str], Route]] = [
            (re.compile(r"/"), self._page),
            (re.compile(r"/bars/(?P<bar_id>[^/]+)/payment-options"), self._payment_options),
            (re.compile(r"/healthz"), self._healthz),
            (re.compile(r"/metrics"), self._metrics),
            (re.compile(r"/static/(?P<name>[\w.-]+)"), self._static),
        ]
        relay.add_batch_sink(self.hub.publish)
        self._server = HttpServer(self.handle, self.hub)
        self._tasks: list[asyncio.Task[None]] = []

    def match(self, path: str) -> bool:
        """Whether ``path`` is one of the routes (``/events`` included)."""
        return path == "/events" or any(p.fullmatch(path) for p, _ in self.routes)

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock`` until :meth:`close`, or until the relay stops."""
        # wait=False: a database that is down now must not stop the HTTP
        # relay from starting; requests get 503 until the pool connects.
        await self.pool.open(wait=False)
        await self._server.start(sock)
        self._tasks = [
            asyncio.create_task(self.hub.keepalives(self.heartbeat_seconds)),
            asyncio.create_task(self._close_when_stopped()),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._server.close()
        await self.pool.close()

    async def _close_when_stopped(self) -> None:
        await self.relay.stopped.wait()
        self._server.close()  # a stopped relay ends every stream

    # -- dispatch ---------------------------------------------------------------------

    async def handle(self, request: Request, conn: HttpConnection) -> Response | None:
        cors = self._cors(request)
        try:
            extra = [*self._worker, *(cors[0] if cors is not None else [])]
            if cors is not None and cors[1] is not None:
                response = cors[1]
            elif request.path == "/events":
                return await self.events(request, conn, extra)
            else:
                response = await self._route(request)
        except HttpError as exc:
            response = Response.json({"error": exc.detail}, exc.status_code, exc.headers)
        except (PoolTimeout, psycopg.OperationalError) as exc:
            logger.warning(
                "request failed: database unavailable (%s)",
                first_line(exc),
                extra={"action": "http_database_unavailable"},
            )
            response = Response.json({"error": "database unavailable"}, 503)
        response.headers += self._worker
        if cors is not None:
            response.headers += cors[0]
        return response

    async def _route(self, request: Request) -> Response:
        for pattern, route in self.routes:
            match = pattern.fullmatch(request.path)
            if match:
                if request.method not in ("GET", "HEAD"):
                    raise HttpError(405, "Method Not Allowed")
                request.params = match.groupdict()
                return await route(request)
        raise HttpError(404, "Not Found")

    def _cors(self, request: Request) -> tuple[list[tuple[str, str]], Response | None] | None:
        """CORS on the routes a customer's browser calls, for the given origins only.

        An allowed origin gets ``Access-Control-Allow-Origin`` on every
        response of those routes, errors included (so a page can read why),
        and an answer to its preflight. Any other origin gets no CORS header,
        and its browser refuses the response to the page. Other routes never
        send CORS headers. None: no CORS on this request at all.
        """
        if not self.origins or not _CUSTOMER_PATHS.fullmatch(request.path):
            return None
        origin = request.headers.get("origin")
        headers = [("Vary", "Origin")]
        if origin not in self.origins:
            return headers, None
        headers.append(("Access-Control-Allow-Origin", str(origin)))
        preflight = None
        if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
            preflight = Response(
                204,
                headers=[
                    ("Access-Control-Allow-Methods", "GET"),
                    ("Access-Control-Allow-Headers", _PREFLIGHT_HEADERS),
                    ("Access-Control-Max-Age", "600"),
                ],
            )
        return headers, preflight

    # -- routes ---------------------------------------------------------------------

    async def _payment_options(self, request: Request) -> Response:
        bar_id = parse_bar_id(request.params["bar_id"])
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("relay_payment_options"), {"bar_id": bar_id})
            row = await cur.fetchone()
        if row is None:
            raise HttpError(404, f"no bar {bar_id}")
        return Response.json(
            {
                "bar_id": str(row["bar_id"]),
                "mpesa_available": row["mpesa_available"],
                "environment": row["environment"],
                "business_shortcode": row["business_shortcode"],
            },
            headers={"Cache-Control": "no-store"},
        )

    async def _healthz(self, request: Request) -> Response:
        relay = self.relay
        body = {
            "listening": relay.connected,
            "last_event_id": relay.last_event_id,
            "generation": str(relay.generation),
            "subscribers": self.hub.count,
            **self.metrics.labels,
        }
        return Response.json(body, 200 if relay.connected else 503)

    async def _metrics(self, request: Request) -> Response:
        return Response(200, self.metrics.render(), [("Content-Type", CONTENT_TYPE)])

    async def _page(self, request: Request) -> Response:
        return _file(STATIC_DIR / "index.html", cache="no-cache")

    async def _static(self, request: Request) -> Response:
        path = STATIC_DIR / request.params["name"]
        if path.suffix not in _STATIC_TYPES or not path.is_file():
            raise HttpError(404, "Not Found")
        return _file(path)


def _file(path: Path, cache: str | None = None) -> Response:
    headers = [("Content-Type", _STATIC_TYPES[path.suffix])]
    if cache:
        headers.append(("Cache-Control", cache))
    return Response(200, path.read_bytes(), headers)
