"""Reading the event log: catch-up, position checks and resets, in one place.

Both readers of ``mpesa_sync.status_events`` go through :class:`LogCursor`:
the relay's own catch-up on its LISTEN connection, and an SSE client's
replay from the pool. A cursor holds a position ``GENERATION:EVENT_ID`` and
reads pages from it; every page comes with the log's state in the same
snapshot (``relay_events_between``), and before the cursor takes a page's
events it checks that the log still honours its position:

* the position must belong to this log (its generation), must not be past
  the newest event and must not be pruned (:meth:`LogState.invalid`);
* an *anchored* cursor (the relay's) also checks that the event at its
  position is still the one it handed on: a restored backup or a failover
  can hold another event under the same id.

When a check fails the cursor resets: it yields a :class:`Reset` and moves
to the newest event, from where the next read carries on. It never skips
events in silence.

:class:`RecentEvents` keeps the last events the relay handed on, so that a
client resuming from a position among them (a reconnect storm after a
relay restart, say) is replayed from memory, with no query.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from mpesa_sync.queries import query
from mpesa_sync.relay.events import (
    MAX_EVENT_ID,
    OTHER_LOG,
    LogState,
    Position,
    Reset,
    StatusEvent,
)

PAGE_SIZE = 1000  # events per catch-up or replay query

Item = StatusEvent | Reset
AnyConnection = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class Page:
    """One read of the log: its state, and events from a position on.

    ``events`` may start with the event at the position itself (the read
    includes it, see ``relay_events_between``).
    """

    log: LogState
    events: list[StatusEvent]


# Reads a page from an event id on (that id included).
Fetch = Callable[[int], Awaitable[Page]]
# Told of every reset: the position refused, why, and the log that refused it.
OnReset = Callable[[Position, str, LogState], None]


async def read_log_state(conn: AnyConnection, bar_id: UUID | None = None) -> tuple[LogState, bool]:
    """The log's state, and whether ``bar_id`` (if given) is a bar."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query("relay_log_state"), {"bar_id": bar_id})
        row = await cur.fetchone()
    assert row is not None  # event_log holds one row
    return LogState.from_row(row), bool(row["bar_exists"])


async def read_page(
    conn: AnyConnection,
    after: int,
    *,
    bar_id: UUID | None = None,
    upto: int = MAX_EVENT_ID,
    limit: int = PAGE_SIZE + 1,
) -> Page:
    """The log's state and up to ``limit`` events in ``[after, upto]`` (of one bar).

    The default limit is one more than a page: the read includes the event at
    ``after`` itself.
    """
    params: dict[str, Any] = {"after": after, "upto": upto, "limit": limit}
    name = "relay_events_between"
    if bar_id is not None:
        name, params["bar_id"] = "relay_bar_events_between", bar_id
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query(name), params)
        rows = await cur.fetchall()
    log = LogState.from_row(rows[0])
    events = [
        StatusEvent.from_row(row, log.generation) for row in rows if row["event_id"] is not None
    ]
    return Page(log, events)


class LogCursor:
    """A reader's position in the log, and the one place that checks it."""

    def __init__(
        self, position: Position, *, anchored: bool = False, on_reset: OnReset | None = None
    ) -> None:
        self.position = position
        self._anchored = anchored
        self._on_reset = on_reset
        # The event at the position once an anchored cursor has seen it, to
        # check that a later read finds the same event there.
        self._anchor: StatusEvent | None = None

    def check(self, log: LogState) -> Reset | None:
        """Check the position against ``log``; a reset (and the cursor moved) if refused.

        A position that passes takes the log's generation (a bare event id
        names none).
        """
        reason = log.invalid(self.position)
        if reason is not None:
            return self._reset(reason, log)
        self.position = Position(self.position.event_id, log.generation)
        return None

    def take(self, page: Page) -> list[Item]:
        """The page's events after the position (the cursor moves past them),
        or ``[reset]`` when the page's log does not honour the position."""
        reason = self._refused(page)
        if reason is not None:
            return [self._reset(reason, page.log)]
        at = self.position.event_id
        events = page.events
        if events and events[0].event_id == at:
            if self._anchored:
                self._anchor = events[0]
            events = events[1:]
        if events:
            self.position = Position(events[-1].event_id, page.log.generation)
            if self._anchored:
                self._anchor = events[-1]
        return list(events)

    async def read(self, fetch: Fetch, upto: int = MAX_EVENT_ID) -> AsyncGenerator[list[Item]]:
        """Pages from the position up to ``upto`` (or the newest event), as
        lists of items: events, or one reset after which reading goes on from
        the newest event."""
        while True:
            page = await fetch(self.position.event_id)
            items = self.take(page)
            if items:
                yield items
            if items and isinstance(items[0], Reset):
                if self.position.event_id >= upto:
                    return
                continue  # read again, from the new position
            if len(page.events) <= PAGE_SIZE or self.position.event_id >= upto:
                return

    def _refused(self, page: Page) -> str | None:
        """Why the log in ``page`` cannot continue from the position, or None."""
        reason = page.log.invalid(self.position)
        if reason is not None or self._anchor is None:
            return reason
        at = self.position.event_id
        here = page.events[0] if page.events else None
        if here is not None and here.event_id == at:
            same = (here.bar_id, here.mpesa_enabled, here.at) == (
                self._anchor.bar_id,
                self._anchor.mpesa_enabled,
                self._anchor.at,
            )
            return None if same else OTHER_LOG
        # The event handed on last is gone. Only a prune may take it.
        return None if at <= page.log.pruned_through else OTHER_LOG

    def _reset(self, reason: str, log: LogState) -> Reset:
        refused = self.position
        reset = Reset.of(reason, log)
        self.position, self._anchor = reset.position, None
        if self._on_reset is not None:
            self._on_reset(refused, reason, log)
        return reset


class RecentEvents:
    """The last ``size`` events handed on, in order, with no gap since ``base``.

    Every event after ``base`` up to the newest is here, so a position of this
    log at or after ``base`` can be replayed from memory exactly. A reset
    empties it: the events before it belong to a position no longer honoured.
    """

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self.generation: UUID | None = None
        self.base: int | None = None  # None: nothing to replay from yet
        self._ids: list[int] = []
        self._events: list[StatusEvent] = []

    def start(self, position: Position) -> None:
        """Begin (again) empty, at ``position``."""
        self.generation, self.base = position.generation, position.event_id
        self._ids, self._events = [], []

    def add(self, items: Sequence[Item]) -> None:
        if items and isinstance(items[0], Reset):
            self.start(items[0].position)
            return
        for item in items:
            assert isinstance(item, StatusEvent)
            self._ids.append(item.event_id)
            self._events.append(item)
        if len(self._ids) > 2 * self.size:  # trim now and then, not on every event
            cut = len(self._ids) - self.size
            self.base = self._ids[cut - 1]
            del self._ids[:cut], self._events[:cut]

    def after(self, position: Position, bar_id: UUID | None) -> list[StatusEvent] | None:
        """The events after ``position`` (of one bar), or None if it is not covered."""
        if (
            self.base is None
            or position.generation != self.generation
            or position.event_id < self.base
            or (self._ids and position.event_id > self._ids[-1])
            or (not self._ids and position.event_id != self.base)
        ):
            return None
        tail = self._events[bisect_right(self._ids, position.event_id) :]
        return tail if bar_id is None else [e for e in tail if e.bar_id == bar_id]
