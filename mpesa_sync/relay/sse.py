"""``GET /events``: the relay as Server-Sent Events.

``id:`` is the event's position, ``GENERATION:EVENT_ID``, and ``data:`` the
event's JSON line. ``?bar_id=`` keeps one bar's events (an unknown bar is
404). A ``Last-Event-ID`` header (``GENERATION:EVENT_ID``, or a bare
``EVENT_ID`` from older clients) resumes the stream:

* a position the log can honour replays the missed events from the table
  (through the pool), then the stream goes live: the replay covers
  ``(Last-Event-ID, joined_at]`` and the subscription everything after
  ``joined_at``, so nothing is skipped or repeated;
* any other position (pruned, past the newest event, of another log) gets a
  first frame ``event: reset`` whose ``id:`` is the newest event's position
  and whose ``data:`` says why; the stream then goes live from there. A prune
  that overtakes a replay resets it the same way.

A client that falls more than the relay's backlog behind is disconnected;
its EventSource reconnects with Last-Event-ID and catches up from the table.
Past ``max_clients`` open streams a new one gets 503 with Retry-After.

This endpoint is a plain ASGI app rather than a StreamingResponse: with a
thousand clients every microsecond per frame counts, so each frame is one
``send`` and the frames of one batch are joined once for every client that
gets that batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from mpesa_sync.errors import SubscriptionLagged, first_line
from mpesa_sync.relay.events import Position, Reset
from mpesa_sync.relay.listener import (
    PAGE_SIZE,
    Item,
    Page,
    Relay,
    Subscription,
    read_log_state,
    read_page,
)

logger = logging.getLogger(__name__)

# An EventSource waits this long before it reconnects after the stream ends.
_RETRY_FRAME = b"retry: 1000\n\n"
_KEEPALIVE_FRAME = b": keepalive\n\n"
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]
RETRY_AFTER_SECONDS = 5  # what a client refused at the cap is told to wait


class EventStream:
    """The ``/events`` endpoint; ``relay`` and ``pool`` are read from app state."""

    def __init__(self, max_clients: int | None = None) -> None:
        self.max_clients = max_clients
        self._frames = _Frames()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "GET":
            raise HTTPException(405, "/events takes GET only")
        state = scope["app"].state
        relay: Relay = state.relay
        bar_id = parse_bar_id(_query_param(scope, "bar_id"))
        position = parse_last_event_id(_header(scope, b"last-event-id"))
        self._admit(relay)  # before the query too: a full relay asks nothing of the database
        reset: Reset | None = None
        after = position.event_id if position is not None else None
        generation = relay.generation
        if bar_id is not None or position is not None:
            async with state.pool.connection() as conn:
                log, bar_exists = await read_log_state(conn, bar_id)
            if not bar_exists:
                raise HTTPException(404, f"no bar {bar_id}")
            generation = log.generation
            reason = log.invalid(position) if position is not None else None
            if reason is not None:
                reset, after = Reset.of(reason, log), log.newest_event_id
                relay.stats.client_resets += 1
            self._admit(relay)
        sub = relay.subscribe(bar_id=bar_id, after=after)
        try:
            # The first page of a replay is read before the response starts,
            # so that a database failure can still be answered with 503.
            page = None
            if after is not None and after < sub.joined_at:
                page = await _replay_page(state.pool, bar_id, after, sub.joined_at)
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            watcher = asyncio.create_task(_close_on_disconnect(receive, sub))
            try:
                await _body(send, _RETRY_FRAME)
                if reset is not None:
                    await _body(send, reset.sse)
                await self._stream(relay, state.pool, sub, page, after, generation, send)
            finally:
                watcher.cancel()
        finally:
            sub.close()

    def _admit(self, relay: Relay) -> None:
        if self.max_clients is not None and relay.subscribers >= self.max_clients:
            relay.stats.refused += 1
            raise HTTPException(
                503,
                f"the relay serves at most {self.max_clients} streams; try again later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )

    async def _stream(
        self,
        relay: Relay,
        pool: AsyncConnectionPool[Any],
        sub: Subscription,
        page: Page | None,
        after: int | None,
        generation: UUID | None,
        send: Send,
    ) -> None:
        try:
            while page is not None and after is not None:
                # Read in one snapshot with its events: a prune that overtook
                # the replay, or a log replaced under it, is a reset.
                reason = page.log.invalid(Position(after, generation))
                if reason is not None:
                    reset = Reset.of(reason, page.log)
                    relay.stats.client_resets += 1
                    await _body(send, reset.sse)
                    generation, after = reset.generation, reset.newest_event_id
                    sub.skip_through(after)
                else:
                    events = [e for e in page.events if e.event_id > after]
                    if events:  # read for this client alone: nothing to share
                        await _body(send, b"".join(e.sse for e in events))
                        after = events[-1].event_id
                    if len(page.events) <= PAGE_SIZE:
                        break
                if after >= sub.joined_at:
                    break
                page = await _replay_page(pool, sub.bar_id, after, sub.joined_at)
            while (items := await sub.next()) is not None:
                await _body(send, self._frames.join(items) if items else _KEEPALIVE_FRAME)
        except SubscriptionLagged:
            logger.info(
                "dropped an SSE client that fell behind; it resumes with Last-Event-ID",
                extra={"action": "sse_client_lagged"},
            )
        except (PoolTimeout, psycopg.OperationalError) as exc:
            logger.warning(
                "SSE replay failed (%s); the client resumes with Last-Event-ID",
                first_line(exc),
                extra={"action": "sse_replay_failed"},
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def heartbeat(relay: Relay, seconds: float) -> None:
    """Every ``seconds``, let each idle SSE stream send a keepalive comment."""
    while True:
        await asyncio.sleep(seconds)
        relay.tick()


async def _replay_page(
    pool: AsyncConnectionPool[Any], bar_id: UUID | None, after: int, upto: int
) -> Page:
    """The log's state and the events from ``after`` up to ``upto``, a page of them."""
    async with pool.connection() as conn:
        # One more than a page: the read includes the event at `after` itself.
        return await read_page(conn, after, bar_id=bar_id, upto=upto, limit=PAGE_SIZE + 1)


def parse_bar_id(value: str | None) -> UUID | None:
    """A bar id from the request, or HTTP 400."""
    if value is None:
        return None
    try:
        return UUID(value)
    except ValueError as exc:
        raise HTTPException(400, f"malformed bar id {value[:64]!r}: expected a UUID") from exc


def parse_last_event_id(value: str | None) -> Position | None:
    """The Last-Event-ID header as a position, or HTTP 400 (which never quotes it)."""
    if value is None or value.strip() == "":
        return None
    try:
        return Position.parse(value)
    except ValueError:
        raise HTTPException(
            400, "malformed Last-Event-ID: expected EVENT_ID or GENERATION:EVENT_ID"
        ) from None


class _Frames:
    """Joined SSE frames, shared by the clients that are sent the same items.

    A list of items is named by its first item, its last item and its length:
    every list a subscription returns is drawn from the relay's one ordered
    stream of distinct objects, so two lists with the same three are the same
    items. The cache holds the first and last items, so that while an entry
    lives no other object can take their ids.
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._cache: OrderedDict[tuple[int, int, int], tuple[Item, Item, bytes]] = OrderedDict()

    def join(self, items: list[Item]) -> bytes:
        if len(items) == 1:
            return items[0].sse
        first, last = items[0], items[-1]
        key = (id(first), id(last), len(items))
        entry = self._cache.get(key)
        if entry is None:
            entry = self._cache[key] = (first, last, b"".join(item.sse for item in items))
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return entry[2]


async def _body(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _close_on_disconnect(receive: Receive, sub: Subscription) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    sub.close()


def _query_param(scope: Scope, name: str) -> str | None:
    return QueryParams(scope.get("query_string", b"")).get(name)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
