"""``GET /events``: the relay as Server-Sent Events.

``id:`` is the event_id and ``data:`` the event's JSON line. ``?bar_id=``
keeps one bar's events. A ``Last-Event-ID`` header replays the missed events
from the table (through the pool), then the stream goes live: the replay
covers ``(Last-Event-ID, joined_at]`` and the subscription everything after
``joined_at``, so nothing is skipped or repeated. A client that falls more
than the relay's backlog behind is disconnected; its EventSource reconnects
with Last-Event-ID and catches up from the table.

This endpoint is a plain ASGI app rather than a StreamingResponse: with a
thousand clients every microsecond per frame counts, so each frame is one
``send`` and the frames of one batch are joined once for every client that
gets that batch.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from mpesa_sync.errors import SubscriptionLagged, first_line
from mpesa_sync.queries import query
from mpesa_sync.relay.events import StatusEvent
from mpesa_sync.relay.listener import (
    MAX_EVENT_ID,
    PAGE_SIZE,
    Relay,
    Subscription,
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
_EVENT_ID = re.compile(r"\d{1,19}")


class EventStream:
    """The ``/events`` endpoint; ``relay`` and ``pool`` are read from app state."""

    def __init__(self) -> None:
        self._frames = _Frames()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        relay: Relay = state.relay
        bar_id = parse_bar_id(_query_param(scope, "bar_id"))
        last = parse_last_event_id(_header(scope, b"last-event-id"))
        sub = relay.subscribe(bar_id=bar_id, after=last)
        try:
            # The first page of a replay is read before the response starts,
            # so that a database failure can still be answered with 503.
            page: list[StatusEvent] = []
            if last is not None and last < sub.joined_at:
                page = await replay_page(state.pool, bar_id, last, sub.joined_at)
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            watcher = asyncio.create_task(_close_on_disconnect(receive, sub))
            try:
                await self._stream(state.pool, sub, page, send)
            finally:
                watcher.cancel()
        finally:
            sub.close()

    async def _stream(
        self, pool: AsyncConnectionPool[Any], sub: Subscription, page: list[StatusEvent], send: Send
    ) -> None:
        await _body(send, _RETRY_FRAME)
        try:
            while page:
                await _body(send, self._frames.join(page))
                after = page[-1].event_id
                if len(page) < PAGE_SIZE or after >= sub.joined_at:
                    break
                page = await replay_page(pool, sub.bar_id, after, sub.joined_at)
            while (events := await sub.next()) is not None:
                await _body(send, self._frames.join(events) if events else _KEEPALIVE_FRAME)
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


async def replay_page(
    pool: AsyncConnectionPool[Any], bar_id: UUID | None, after: int, upto: int = MAX_EVENT_ID
) -> list[StatusEvent]:
    """Up to PAGE_SIZE events in ``(after, upto]`` from the table, oldest first."""
    params: dict[str, Any] = {"after": after, "upto": upto, "limit": PAGE_SIZE}
    name = "relay_events_between"
    if bar_id is not None:
        name, params["bar_id"] = "relay_bar_events_between", bar_id
    async with pool.connection() as conn:
        cur = await conn.execute(query(name), params)
        rows = await cur.fetchall()
    return [StatusEvent.from_row(row) for row in rows]


def parse_bar_id(value: str | None) -> UUID | None:
    """A bar id from the request, or HTTP 400."""
    if value is None:
        return None
    try:
        return UUID(value)
    except ValueError as exc:
        raise HTTPException(400, f"malformed bar id {value[:64]!r}: expected a UUID") from exc


def parse_last_event_id(value: str | None) -> int | None:
    """The Last-Event-ID header as an event id, or HTTP 400."""
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if not _EVENT_ID.fullmatch(value) or int(value) > MAX_EVENT_ID:
        raise HTTPException(
            400, f"malformed Last-Event-ID {value[:64]!r}: expected a non-negative event id"
        )
    return int(value)


class _Frames:
    """Joined SSE frames, shared by the clients that are sent the same events.

    A list of events is named by its first id, last id and length: every list
    a subscription returns is drawn from the one ordered stream, so two lists
    with the same three are the same events.
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._cache: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()

    def join(self, events: list[StatusEvent]) -> bytes:
        if len(events) == 1:
            return events[0].sse
        key = (events[0].event_id, events[-1].event_id, len(events))
        data = self._cache.get(key)
        if data is None:
            data = self._cache[key] = b"".join(event.sse for event in events)
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return data


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
