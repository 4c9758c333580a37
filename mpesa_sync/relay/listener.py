"""The relay's core: one LISTEN connection, catch-up from the table, fan-out.

The stdout relay and the HTTP relay both run on one :class:`Relay`. It owns
the only connection that LISTENs on ``mpesa_status`` and keeps one promise:
every committed status event is handed on once, in ``event_id`` order, with
no gap, across lost connections and server restarts; and when that cannot be
done, because the log was pruned past the relay's position, replaced or
restored, every consumer is told so with a :class:`~.events.Reset`, never
left in silence.

How it keeps it:

* After every (re)connect it LISTENs first, then reads ``status_events``
  from the last id it delivered. Anything committed before the LISTEN is in
  that read; anything committed after it is announced.
* A notification is only a hint that there is something to read: the relay
  reads the events themselves from the table (from the last delivered,
  which it checks is still the event it handed on), so a lost, merged,
  repeated or forged notification can neither skip nor repeat an event. A
  hint for an id already delivered is dropped without a query.
* With no notification for ``idle_timeout`` it runs the same read, which is
  also the liveness check of an idle connection (TCP keepalives back it up).
* Every read comes with the log's state in the same snapshot, and with the
  event at the relay's position: the position must belong to this log (its
  generation), must not be pruned, and the event there must still be the one
  it handed on (a restored backup or a failover can hold another). If not,
  the relay resets: one warning, a :class:`~.events.Reset` to every sink and
  subscriber, and it carries on live from the newest event.
* Any database error means reconnecting with exponential backoff and
  jitter; the relay never stops because the database went away.

Consumers are *sinks* (called synchronously, in order, for every event and
reset: the stdout writer, the metrics) and *subscriptions* (asyncio
consumers such as SSE clients, each allowed to fall at most ``backlog``
events behind; one that falls further is dropped with
:class:`SubscriptionLagged` and resumes from the table with the last id it
got). A slow subscriber never slows the relay.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from time import monotonic
from typing import Any, cast
from uuid import UUID

import psycopg

from mpesa_sync import db
from mpesa_sync.errors import (
    ConfigError,
    DatabaseUnavailable,
    MpesaSyncError,
    SubscriptionLagged,
    first_line,
)
from mpesa_sync.queries import query
from mpesa_sync.relay.events import (
    FUTURE,
    MAX_EVENT_ID,
    OTHER_LOG,
    LogState,
    Position,
    Reset,
    StatusEvent,
    payload_event_id,
)

logger = logging.getLogger(__name__)

# The LISTEN connection's application_name: how an operator (or a test)
# finds it in pg_stat_activity.
APPLICATION_NAME = "mpesa-sync-relay"
PAGE_SIZE = 1000  # events per catch-up or replay query

Item = StatusEvent | Reset
Sink = Callable[[Item], None]
AnyConnection = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class RelayConfig:
    """Timings and limits of a relay; the defaults suit production."""

    idle_timeout: float = 5.0  # read the table after this long without a hint
    wait_slice: float = 1.0  # longest single wait on the socket, so stop() is prompt
    backlog: int = 10_000  # events a subscriber may fall behind before it is dropped
    backoff_initial: float = 0.1  # first reconnect delay; doubles up to backoff_max
    backoff_max: float = 5.0
    application_name: str = APPLICATION_NAME


@dataclass
class RelayStats:
    """Counters since the relay started (served at /metrics)."""

    events: int = 0  # events handed on
    resets: int = 0  # times the relay's own position could not be honoured
    dropped: int = 0  # subscribers dropped for falling more than the backlog behind
    client_resets: int = 0  # reset frames sent to SSE clients, at connect or in a replay
    refused: int = 0  # SSE connections refused at the client cap


@dataclass(frozen=True)
class Page:
    """One read of the log: its state, and events from a position on.

    ``events`` may start with the event at the position itself (the read
    includes it, see ``relay_events_between``).
    """

    log: LogState
    events: list[StatusEvent]


async def read_log_state(conn: AnyConnection, bar_id: UUID | None = None) -> tuple[LogState, bool]:
    """The log's state, and whether ``bar_id`` (if given) is a bar."""
    cur = await conn.execute(query("relay_log_state"), {"bar_id": bar_id})
    row = await cur.fetchone()
    assert row is not None  # event_log holds one row
    *state, bar_exists = row
    return LogState(*state), bool(bar_exists)


async def read_page(
    conn: AnyConnection,
    after: int,
    *,
    bar_id: UUID | None = None,
    upto: int = MAX_EVENT_ID,
    limit: int = PAGE_SIZE,
) -> Page:
    """The log's state and up to ``limit`` events in ``[after, upto]`` (of one bar)."""
    params: dict[str, Any] = {"after": after, "upto": upto, "limit": limit}
    name = "relay_events_between"
    if bar_id is not None:
        name, params["bar_id"] = "relay_bar_events_between", bar_id
    cur = await conn.execute(query(name), params)
    rows = await cur.fetchall()
    log = LogState(*rows[0][:4])
    events = [StatusEvent.from_row(row[4:], log.generation) for row in rows if row[4] is not None]
    return Page(log, events)


class Relay:
    """Owns the LISTEN connection, the catch-up reads and the fan-out."""

    def __init__(
        self, dsn: str, *, since: Position | None = None, config: RelayConfig | None = None
    ) -> None:
        self.dsn = dsn
        self.config = config or RelayConfig()
        self.generation: UUID | None = None
        self.last_event_id = 0
        self.connected = False
        self.stats = RelayStats()
        self._since = since
        # The event at last_event_id once the relay has seen it, to check that
        # a later read finds the same event there.
        self._anchor: StatusEvent | None = None
        self._conn: AnyConnection | None = None
        self._sinks: list[Sink] = []
        # Recent events (and resets) for the subscribers that take every bar,
        # shared by all of them: each holds a cursor (a sequence number) into it.
        self._log: list[Item] = []
        self._log_base = 0  # sequence number of _log[0]
        self._last_reset = -1  # sequence number of the newest reset in _log
        self._all: set[Subscription] = set()
        self._by_bar: dict[UUID, set[Subscription]] = {}
        self._stop = asyncio.Event()
        self._finished = False

    @property
    def position(self) -> Position:
        """The last event handed on, in its log."""
        return Position(self.last_event_id, self.generation)

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Connect for the first time and fix the starting point.

        Raises DatabaseUnavailable, SchemaNotInstalled or ConfigError (a
        ``since`` the log cannot honour: past the newest event, older than the
        oldest retained one, or of another log): at start a problem is an
        error, later it is only a reason to reconnect or reset.
        """
        conn = await self._connect()
        try:
            with db.translated(self.dsn):
                await db.require_schema_async(conn, event_log=True)
                log, _ = await read_log_state(conn)
            if self._since is not None:
                reason = log.invalid(self._since)
                if reason is not None:
                    hint = "" if reason != FUTURE else "; is this the right database?"
                    raise ConfigError(f"--since {log.describe(self._since, reason)}{hint}")
            self.generation = log.generation
            self.last_event_id = (
                log.newest_event_id if self._since is None else self._since.event_id
            )
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        logger.info("relaying events after %s", self.position, extra={"action": "relay_start"})

    async def run(self) -> None:
        """Relay until :meth:`stop`; a lost database means reconnecting, never returning."""
        backoff = _Backoff(self.config.backoff_initial, self.config.backoff_max)
        try:
            while not self._stop.is_set():
                conn, self._conn = self._conn, None
                try:
                    if conn is None:
                        conn = await self._connect()
                    await self._catch_up(conn)
                    self.connected = True
                    backoff.reset()
                    logger.info(
                        "listening on mpesa_status after event %d",
                        self.last_event_id,
                        extra={"action": "relay_listening"},
                    )
                    await self._listen(conn)
                except (psycopg.Error, MpesaSyncError) as exc:
                    if self._stop.is_set():
                        break
                    delay = backoff.next()
                    lost = isinstance(exc, psycopg.OperationalError | DatabaseUnavailable)
                    logger.warning(
                        "%s (%s); reconnecting in %.1f s",
                        "database connection lost" if lost else "reading the event log failed",
                        first_line(exc),
                        delay,
                        extra={"action": "relay_reconnect"},
                    )
                    await self._sleep(delay)
                finally:
                    self.connected = False
                    if conn is not None:
                        await conn.close()
        finally:
            self._finish()
            logger.info(
                "relay stopped after event %d", self.last_event_id, extra={"action": "relay_stop"}
            )

    def stop(self) -> None:
        """Ask :meth:`run` to return (within ``wait_slice``); ends every subscription."""
        self._stop.set()

    # -- consumers ----------------------------------------------------------------

    def add_sink(self, sink: Sink) -> None:
        """Call ``sink`` for every event and reset, in order, before subscribers are woken."""
        self._sinks.append(sink)

    def subscribe(self, bar_id: UUID | None = None, after: int | None = None) -> Subscription:
        """Live events from now on (for one bar, or all).

        ``joined_at`` on the result is the last id delivered before it joined:
        a consumer resuming from id ``n`` reads ``(n, joined_at]`` from the
        table and then takes the subscription, which skips ids <= ``after``.
        """
        sub = Subscription(self, bar_id, after)
        if self._finished:
            sub._closed = True
        elif bar_id is None:
            self._all.add(sub)
        else:
            self._by_bar.setdefault(bar_id, set()).add(sub)
        return sub

    @property
    def subscribers(self) -> int:
        return len(self._all) + sum(len(s) for s in self._by_bar.values())

    def tick(self) -> None:
        """Wake every subscriber; one with nothing new gets ``[]`` (a keepalive).

        One timer for all subscribers, rather than a timeout on every wait.
        """
        for sub in self._subscriptions():
            sub._ticked = True
            sub._ready.set()

    # -- internals ----------------------------------------------------------------

    async def _connect(self) -> AnyConnection:
        conn = await db.connect_async(
            self.dsn,
            autocommit=True,
            application_name=self.config.application_name,
            # Keepalives notice a dead peer on an idle connection; this bounds
            # a read that was sent into a black hole (unacknowledged data).
            tcp_user_timeout=30_000,
        )
        try:
            # LISTEN before the first read: a commit after this point is
            # announced, one before it is in the read.
            with db.translated(self.dsn):
                await conn.execute(query("relay_listen"))
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _listen(self, conn: AnyConnection) -> None:
        idle_until = monotonic() + self.config.idle_timeout
        while not self._stop.is_set():
            hinted = False
            # The generator holds the connection: leave it before querying.
            # Notifications that arrive while we query are kept for the next run.
            async with aclosing(conn.notifies(timeout=self.config.wait_slice)) as notes:
                async for note in notes:
                    event_id = payload_event_id(note.payload)
                    if event_id is None or event_id > self.last_event_id:
                        hinted = True
                        break
            if hinted or monotonic() >= idle_until:
                await self._catch_up(conn)
                idle_until = monotonic() + self.config.idle_timeout

    async def _catch_up(self, conn: AnyConnection) -> None:
        """Deliver every committed event after the last delivered one, or reset."""
        while True:
            # One more than a page: the read includes the event at our position.
            page = await read_page(conn, self.last_event_id, limit=PAGE_SIZE + 1)
            reason = self._invalid(page)
            if reason is not None:
                self._reset(reason, page.log)
                continue  # read again, from the new position
            events = page.events
            if events and events[0].event_id == self.last_event_id:
                self._anchor, events = events[0], events[1:]
            if events:
                self._deliver(events)
            if len(page.events) <= PAGE_SIZE:
                return

    def _invalid(self, page: Page) -> str | None:
        """Why the log in ``page`` cannot continue from our position, or None."""
        reason = page.log.invalid(self.position)
        if reason is not None or self._anchor is None:
            return reason
        here = page.events[0] if page.events else None
        if here is not None and here.event_id == self.last_event_id:
            same = (here.bar_id, here.mpesa_enabled, here.at) == (
                self._anchor.bar_id,
                self._anchor.mpesa_enabled,
                self._anchor.at,
            )
            return None if same else OTHER_LOG
        # The event we handed on last is gone. Only a prune may take it.
        return None if self.last_event_id <= page.log.pruned_through else OTHER_LOG

    def _reset(self, reason: str, log: LogState) -> None:
        """Our position cannot be honoured: tell everyone, carry on after the newest event."""
        old = self.position
        reset = Reset.of(reason, log)
        self.generation, self.last_event_id, self._anchor = (
            log.generation,
            log.newest_event_id,
            None,
        )
        self.stats.resets += 1
        logger.warning(
            "reset: position %s; carrying on live after %s",
            log.describe(old, reason),
            reset.position,
            extra={"action": "relay_reset"},
        )
        for sink in self._sinks:
            sink(reset)
        for group in self._by_bar.values():
            for sub in group:
                sub._push(reset)
        self._last_reset = self._log_base + len(self._log)
        self._append([reset])

    def _deliver(self, events: list[StatusEvent]) -> None:
        for event in events:
            self.last_event_id = event.event_id
            for sink in self._sinks:
                sink(event)
            for sub in self._by_bar.get(event.bar_id, ()):
                sub._push(event)
        self._anchor = events[-1]
        self.stats.events += len(events)
        self._append(events)

    def _append(self, items: Sequence[Item]) -> None:
        """Add to the shared log of the every-bar subscribers and wake them."""
        self._log.extend(items)
        backlog = self.config.backlog
        if len(self._log) > 2 * backlog:  # trim now and then, not on every event
            drop = len(self._log) - backlog
            del self._log[:drop]
            self._log_base += drop
        for sub in self._all:
            sub._ready.set()

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub.bar_id is None:
            self._all.discard(sub)
        else:
            subs = self._by_bar.get(sub.bar_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_bar[sub.bar_id]

    def _subscriptions(self) -> list[Subscription]:
        return [*self._all, *(s for group in self._by_bar.values() for s in group)]

    def _finish(self) -> None:
        self._finished = True
        for sub in self._subscriptions():
            sub._closed = True
            sub._ready.set()

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        except TimeoutError:
            pass


class Subscription:
    """One asyncio consumer's share of the stream; see :meth:`Relay.subscribe`."""

    def __init__(self, relay: Relay, bar_id: UUID | None, after: int | None) -> None:
        self.bar_id = bar_id
        self.joined_at = relay.last_event_id
        self._relay = relay
        self._after = max(after or 0, relay.last_event_id)
        self._cursor = relay._log_base + len(relay._log)  # every-bar subscribers
        self._pending: deque[Item] = deque()  # one-bar subscribers
        self._pending_reset = False
        self._ready = asyncio.Event()
        self._ticked = False
        self._lagged = False
        self._closed = False

    async def next(self) -> list[Item] | None:
        """The events (and resets) delivered since the last call, waiting for one.

        Returns ``[]`` when :meth:`Relay.tick` came first (time for a
        keepalive) and None once the subscription is closed or the relay has
        stopped; raises SubscriptionLagged when this subscriber fell too far
        behind.
        """
        while True:
            items = self._take()
            if items:
                return items
            if self._closed:
                return None
            if self._ticked:
                self._ticked = False
                return []
            self._ready.clear()
            await self._ready.wait()

    def skip_through(self, event_id: int) -> None:
        """Leave out live events up to ``event_id`` (a reset already covers them)."""
        self._after = max(self._after, event_id)

    def close(self) -> None:
        """Leave the relay and wake a pending :meth:`next` (idempotent)."""
        self._closed = True
        self._ready.set()
        self._relay._unsubscribe(self)

    def _push(self, item: Item) -> None:
        if len(self._pending) >= self._relay.config.backlog:
            self._drop()
        else:
            self._pending.append(item)
            self._pending_reset |= isinstance(item, Reset)
        self._ready.set()

    def _drop(self) -> None:
        if not self._lagged:
            self._lagged = True
            self._relay.stats.dropped += 1

    def _take(self) -> list[Item]:
        if self._lagged:
            raise SubscriptionLagged()
        if self.bar_id is None:
            relay = self._relay
            end = relay._log_base + len(relay._log)
            # The log keeps at least the last `backlog` events, so a subscriber
            # within that lag always finds its cursor in it.
            if end - self._cursor > relay.config.backlog:
                self._drop()
                raise SubscriptionLagged()
            items = relay._log[self._cursor - relay._log_base :]
            has_reset = relay._last_reset >= self._cursor
            self._cursor = end
        else:
            items = list(self._pending)
            has_reset, self._pending_reset = self._pending_reset, False
            self._pending.clear()
        if has_reset:
            return self._after_resets(items)
        events = cast(list[StatusEvent], items)
        if events and events[0].event_id <= self._after:
            events = [e for e in events if e.event_id > self._after]
        if events:
            self._after = events[-1].event_id
        return cast(list[Item], events)

    def _after_resets(self, items: list[Item]) -> list[Item]:
        """``items`` without what this subscriber has; a reset moves its position."""
        kept: list[Item] = []
        for item in items:
            if isinstance(item, Reset):
                self._after = item.newest_event_id
                kept.append(item)
            elif item.event_id > self._after:
                self._after = item.event_id
                kept.append(item)
        return kept


class _Backoff:
    """Exponential reconnect delays with jitter, so that relays which lost the
    same server do not all come back in step."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def reset(self) -> None:
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.maximum, self.initial * 2 ** min(self.attempt, 30))
        self.attempt += 1
        return random.uniform(delay / 2, delay)
