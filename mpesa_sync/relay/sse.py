"""``GET /events``: the relay as Server-Sent Events.

``id:`` is the event's position, ``GENERATION:EVENT_ID``, and ``data:`` the
event's JSON line. ``?bar_id=`` keeps one bar's events (an unknown bar is
404). A ``Last-Event-ID`` header (``GENERATION:EVENT_ID``, or a bare
``EVENT_ID`` from older clients) resumes the stream:

* a position the log can honour replays the missed events from the table
  (through the pool), then the stream goes live: the client joins the
  fan-out first, at the relay's position ``joined_at``; the replay covers
  ``(Last-Event-ID, joined_at]`` and what the relay hands on meanwhile waits
  in the client's pending list, so nothing is skipped or repeated;
* any other position (pruned, past the newest event, of another log) gets a
  first frame ``event: reset`` whose ``id:`` is the newest event's position
  and whose ``data:`` says why; the stream then goes live from there. A prune
  that overtakes a replay resets it the same way.

The position checks and resets are the log cursor's (:mod:`.log`), the
writes the fan-out's (:mod:`.fanout`). Past ``max_clients`` open streams a
new one gets 503 with Retry-After.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from mpesa_sync.errors import HttpError, first_line
from mpesa_sync.relay.events import Position, Reset
from mpesa_sync.relay.fanout import Client, Hub
from mpesa_sync.relay.http import HttpConnection, Request, Response
from mpesa_sync.relay.listener import Relay
from mpesa_sync.relay.log import LogCursor, Page, read_log_state, read_page
from mpesa_sync.relay.wire import RETRY_FRAME, STREAM_HEADERS, response_head

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5  # what a client refused at the cap is told to wait
KNOWN_BARS = 100_000  # bar ids remembered as existing, so a reconnect asks nothing


class EventStream:
    """The ``/events`` endpoint."""

    def __init__(
        self,
        relay: Relay,
        hub: Hub,
        pool: AsyncConnectionPool[Any],
        *,
        max_clients: int | None = None,
    ) -> None:
        self.relay = relay
        self.hub = hub
        self.pool = pool
        self.max_clients = max_clients
        self._known_bars: set[UUID] = set()

    async def __call__(
        self, request: Request, conn: HttpConnection, extra_headers: list[tuple[str, str]]
    ) -> Response | None:
        if request.method != "GET":
            raise HttpError(405, "/events takes GET only")
        bar_id = parse_bar_id(request.param("bar_id"))
        position = parse_last_event_id(request.headers.get("last-event-id"))
        self._admit()  # before the query too: a full relay asks nothing of the database
        relay = self.relay
        known = bar_id is None or bar_id in self._known_bars
        recent = relay.recent.after(position, bar_id) if position and known else None
        if recent is not None and conn.transport is not None:
            # Covered by the events the relay holds: replayed from memory, no query.
            client = Client(conn.transport, bar_id, relay.last_event_id)
            self.hub.add(client)
            conn.start_stream(client)
            head = response_head(200, [*STREAM_HEADERS, *extra_headers]) + RETRY_FRAME
            conn.write(head + b"".join(e.sse for e in recent))
            return None
        cursor = LogCursor(Position(relay.last_event_id, relay.generation))
        reset = None
        if position is not None or (bar_id is not None and bar_id not in self._known_bars):
            async with self.pool.connection() as db_conn:
                log, bar_exists = await read_log_state(db_conn, bar_id)
            if not bar_exists:
                raise HttpError(404, f"no bar {bar_id}")
            self._remember(bar_id)
            if position is not None:
                cursor.position = position
                reset = cursor.check(log)
                if reset is not None:
                    self.hub.stats.client_resets += 1
            self._admit()
        if conn.transport is None or conn.closed:
            return None
        joined_at = relay.last_event_id
        client = Client(conn.transport, bar_id, max(cursor.position.event_id, joined_at))
        replay = cursor.position.event_id < joined_at
        if replay:
            client.pending = []
        self.hub.add(client)
        conn.start_stream(client)
        try:
            # The first page of a replay is read before the answer starts, so
            # that a database failure can still be answered with 503.
            page = await self._page(bar_id, cursor.position.event_id, joined_at) if replay else None
        except BaseException:
            self.hub.remove(client)
            raise
        head = response_head(200, [*STREAM_HEADERS, *extra_headers]) + RETRY_FRAME
        conn.write(head + (reset.sse if reset is not None else b""))
        if page is not None:
            await self._replay(conn, client, cursor, page, joined_at)
        return None

    def _admit(self) -> None:
        if self.max_clients is not None and self.hub.count >= self.max_clients:
            self.hub.stats.refused += 1
            raise HttpError(
                503,
                f"the relay serves at most {self.max_clients} streams; try again later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )

    def _remember(self, bar_id: UUID | None) -> None:
        if bar_id is not None:
            if len(self._known_bars) >= KNOWN_BARS:
                self._known_bars.clear()
            self._known_bars.add(bar_id)

    async def _page(self, bar_id: UUID | None, after: int, upto: int) -> Page:
        async with self.pool.connection() as db_conn:
            return await read_page(db_conn, after, bar_id=bar_id, upto=upto)

    async def _replay(
        self, conn: HttpConnection, client: Client, cursor: LogCursor, first: Page, joined_at: int
    ) -> None:
        """Send ``(position, joined_at]`` from the table, then the live items held meanwhile."""
        pages = [first]

        async def fetch(after: int) -> Page:
            return pages.pop() if pages else await self._page(client.bar_id, after, joined_at)

        try:
            async for items in cursor.read(fetch, upto=joined_at):
                if client.transport.is_closing():
                    return
                if isinstance(items[0], Reset):
                    self.hub.stats.client_resets += 1
                # read for this client alone: nothing to share
                self.hub.send(client, b"".join(item.sse for item in items))
                await conn.drain()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            logger.warning(
                "SSE replay failed (%s); the client resumes with Last-Event-ID",
                first_line(exc),
                extra={"action": "sse_replay_failed"},
            )
            self.hub.remove(client)
            client.transport.close()
            return
        self.hub.go_live(client, cursor.position.event_id)


def parse_bar_id(value: str | None) -> UUID | None:
    """A bar id from the request, or HTTP 400."""
    if value is None:
        return None
    try:
        return UUID(value)
    except ValueError as exc:
        raise HttpError(400, f"malformed bar id {value[:64]!r}: expected a UUID") from exc


def parse_last_event_id(value: str | None) -> Position | None:
    """The Last-Event-ID header as a position, or HTTP 400 (which never quotes it)."""
    if value is None or value.strip() == "":
        return None
    try:
        return Position.parse(value)
    except ValueError:
        raise HttpError(
            400, "malformed Last-Event-ID: expected EVENT_ID or GENERATION:EVENT_ID"
        ) from None
