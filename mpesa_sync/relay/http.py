"""A small HTTP/1.1 server on asyncio's protocols, made for many open streams.

Each connection is an :class:`HttpConnection` (a protocol; requests parsed
by httptools). A request is answered by the app's handler in a task that
lives as long as the answer takes: an ordinary answer is written whole, with
Content-Length, and the connection is kept for the next request; an SSE
stream is handed to the fan-out (:meth:`HttpConnection.start_stream`),
after which the connection is a protocol object and a socket, with no task.

Limits: a request must arrive whole within ``REQUEST_TIMEOUT`` seconds of
the connection opening (or of the last answer on a kept connection), and
its head must fit in ``MAX_HEAD`` bytes; a kept connection idle for as long
is closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import parse_qs

import httptools

from mpesa_sync.relay.fanout import Client, Hub
from mpesa_sync.relay.wire import json_body, response_head

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0
MAX_HEAD = 16 * 1024
WRITE_HIGH_WATER = 64 * 1024  # a stream's transport pauses (is blocked) past this


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lowercase names
    params: dict[str, str] = field(default_factory=dict)  # from the route's pattern

    def param(self, name: str) -> str | None:
        values = parse_qs(self.query, keep_blank_values=True).get(name)
        return values[-1] if values else None


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(
        cls, value: object, status: int = 200, headers: dict[str, str] | None = None
    ) -> Response:
        pairs = [("Content-Type", "application/json"), *(headers or {}).items()]
        return cls(status, json_body(value), pairs)


# Answers a request; None: the handler took the connection over (a stream).
Handler = Callable[[Request, "HttpConnection"], Awaitable[Response | None]]


class HttpServer:
    """Serves ``handler`` on listening sockets; :meth:`close` ends every connection."""

    def __init__(self, handler: Handler, hub: Hub) -> None:
        self.handler = handler
        self.hub = hub
        self.connections: set[HttpConnection] = set()  # those not streaming
        self._servers: list[asyncio.Server] = []

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: HttpConnection(self), sock=sock, backlog=4096)
        self._servers.append(server)

    def close(self) -> None:
        """Stop accepting, end every stream (flushed) and every idle connection."""
        for server in self._servers:
            server.close()
        self.hub.close_all()
        for conn in list(self.connections):
            conn.close()


class HttpConnection(asyncio.Protocol):
    """One client connection: requests in, answers or a stream out.

    Slotted, and it lets go of its parser and request once it streams: tens
    of thousands of these stay open.
    """

    __slots__ = (
        "_busy",
        "_drained",
        "_head_size",
        "_headers",
        "_parser",
        "_queue",
        "_timer",
        "_url",
        "client",
        "server",
        "transport",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None  # once streaming
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_size = 0
        self._queue: list[tuple[Request, bool]] = []
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.server.connections.add(self)
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            return  # a stream's client has nothing more to say
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "upgrades are not served")
        except httptools.HttpParserError:
            self._refuse(431 if self._head_size > MAX_HEAD else 400, "malformed request")

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.client is not None:
            self.server.hub.remove(self.client)
        self._cancel_timer()
        self._wake()
        self.transport = None

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()
        if self.client is not None:
            self.server.hub.paused(self.client)

    def resume_writing(self) -> None:
        self._wake()
        if self.client is not None:
            self.server.hub.resumed(self.client)

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url, self._headers, self._head_size = b"", {}, 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._grow(len(name) + len(value))

    def on_message_complete(self) -> None:
        try:
            parsed = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self._refuse(400, "malformed URL")
            return
        assert self._parser is not None
        request = Request(
            method=self._parser.get_method().decode("latin-1"),
            path=(parsed.path or b"/").decode("latin-1"),
            query=(parsed.query or b"").decode("latin-1"),
            headers=self._headers,
        )
        self._queue.append((request, self._parser.should_keep_alive()))
        if not self._busy:
            self._next()

    # -- answering --------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the socket refuses writes (for a replay, written by one task)."""
        if self._drained is not None:
            await self._drained

    def _wake(self) -> None:
        if self._drained is not None:
            if not self._drained.done():
                self._drained.set_result(None)
            self._drained = None

    def start_stream(self, client: Client) -> None:
        """From now on this connection is ``client``'s stream, in the hub's hands."""
        self.client = client
        self.server.connections.discard(self)
        self._cancel_timer()
        self._queue.clear()
        self._parser, self._headers, self._url = None, {}, b""
        if self.transport is not None:
            self.transport.resume_reading()  # so that a hang-up is noticed

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _next(self) -> None:
        request, keep_alive = self._queue.pop(0)
        self._busy = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.pause_reading()
        asyncio.get_running_loop().create_task(self._answer(request, keep_alive))

    async def _answer(self, request: Request, keep_alive: bool) -> None:
        try:
            response = await self.server.handler(request, self)
        except Exception as exc:  # a bug: one line in the log, a 500, the connection closed
            logger.error(
                "request %s %s failed: %s",
                request.method,
                request.path,
                exc,
                exc_info=logger.isEnabledFor(logging.DEBUG),
                extra={"action": "http_request_failed"},
            )
            response, keep_alive = Response.json({"error": "internal error"}, 500), False
        self._busy = False
        if response is None or self.closed:
            return
        if self.client is not None:  # a stream that failed before it began: end it
            self.server.hub.remove(self.client)
            keep_alive = False
        head_only = request.method == "HEAD"
        headers = response.headers if keep_alive else [*response.headers, ("Connection", "close")]
        self.write(response_head(response.status, headers, length=len(response.body)))
        if not head_only:
            self.write(response.body)
        if not keep_alive:
            self.close()
        elif self._queue:
            self._next()
        elif self.transport is not None:
            self.transport.resume_reading()
            self._arm_timer()

    def _refuse(self, status: int, detail: str) -> None:
        response = Response.json({"error": detail}, status)
        headers = [*response.headers, ("Connection", "close")]
        self.write(response_head(status, headers, length=len(response.body)) + response.body)
        self.close()

    def _grow(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD:
            raise httptools.HttpParserError("request head too large")

    def _arm_timer(self) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, self.close)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
