"""The relay's core: one LISTEN connection, catch-up from the table, fan-out.

The stdout relay and the HTTP relay both run on one :class:`Relay`. It owns
the only connection that LISTENs on ``mpesa_status`` and keeps one promise:
every committed status event is handed on once, in ``event_id`` order, with
no gap, across lost connections and server restarts.

How it keeps it:

* After every (re)connect it LISTENs first, then reads ``status_events``
  after the last id it delivered. Anything committed before the LISTEN is in
  that read; anything committed after it is announced.
* A notification is only a hint that there is something to read: the relay
  reads the events themselves from the table (``event_id`` > last
  delivered), so a lost, merged, repeated or forged notification can neither
  skip nor repeat an event. A hint for an id already delivered is dropped
  without a query.
* With no notification for ``idle_timeout`` it runs the same read, which is
  also the liveness check of an idle connection (TCP keepalives back it up).
* Any database error means reconnecting with exponential backoff and
  jitter; the relay never stops because the database went away.

Consumers are *sinks* (called synchronously, in order, for every event: the
stdout writer) and *subscriptions* (asyncio consumers such as SSE clients,
each allowed to fall at most ``backlog`` events behind; one that falls
further is dropped with :class:`SubscriptionLagged` and resumes from the
table with the last id it got). A slow subscriber never slows the relay.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from time import monotonic
from typing import Any
from uuid import UUID

import psycopg

from mpesa_sync import db
from mpesa_sync.errors import ConfigError, MpesaSyncError, SubscriptionLagged, first_line
from mpesa_sync.queries import query
from mpesa_sync.relay.events import StatusEvent, payload_event_id

logger = logging.getLogger(__name__)

# The LISTEN connection's application_name: how an operator (or a test)
# finds it in pg_stat_activity.
APPLICATION_NAME = "mpesa-sync-relay"
MAX_EVENT_ID = 2**63 - 1
PAGE_SIZE = 1000  # events per catch-up or replay query

Sink = Callable[[StatusEvent], None]


@dataclass(frozen=True)
class RelayConfig:
    """Timings and limits of a relay; the defaults suit production."""

    idle_timeout: float = 5.0  # read the table after this long without a hint
    wait_slice: float = 1.0  # longest single wait on the socket, so stop() is prompt
    backlog: int = 10_000  # events a subscriber may fall behind before it is dropped
    backoff_initial: float = 0.1  # first reconnect delay; doubles up to backoff_max
    backoff_max: float = 5.0
    application_name: str = APPLICATION_NAME


class Relay:
    """Owns the LISTEN connection, the catch-up reads and the fan-out."""

    def __init__(
        self, dsn: str, *, since: int | None = None, config: RelayConfig | None = None
    ) -> None:
        self.dsn = dsn
        self.config = config or RelayConfig()
        self.last_event_id = 0
        self.connected = False
        self._since = since
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._sinks: list[Sink] = []
        # Recent events for the subscribers that take every bar, shared by all
        # of them: each holds a cursor (a sequence number) into it.
        self._log: list[StatusEvent] = []
        self._log_base = 0  # sequence number of _log[0]
        self._all: set[Subscription] = set()
        self._by_bar: dict[UUID, set[Subscription]] = {}
        self._stop = asyncio.Event()
        self._finished = False

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Connect for the first time and fix the starting point.

        Raises DatabaseUnavailable, SchemaNotInstalled or ConfigError (a
        ``since`` past the newest event): at start a problem is an error, later
        it is only a reason to reconnect.
        """
        conn = await self._connect()
        try:
            with db.translated(self.dsn):
                await db.require_schema_async(conn)
                row = await (await conn.execute(query("newest_event_id"))).fetchone()
            newest = int(row[0]) if row else 0
            if self._since is not None and self._since > newest:
                raise ConfigError(
                    f"--since {self._since} is past the newest event ({newest}); "
                    "is this the right database?"
                )
            self.last_event_id = newest if self._since is None else self._since
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        logger.info("relaying events after %d", self.last_event_id, extra={"action": "relay_start"})

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
                    logger.warning(
                        "database connection lost (%s); reconnecting in %.1f s",
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
        """Call ``sink`` for every event, in order, before subscribers are woken."""
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

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
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

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
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

    async def _catch_up(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Deliver every committed event after the last delivered one."""
        while True:
            cur = await conn.execute(
                query("relay_events_between"),
                {"after": self.last_event_id, "upto": MAX_EVENT_ID, "limit": PAGE_SIZE},
            )
            rows = await cur.fetchall()
            if rows:
                self._deliver([StatusEvent.from_row(row) for row in rows])
            if len(rows) < PAGE_SIZE:
                return

    def _deliver(self, events: list[StatusEvent]) -> None:
        for event in events:
            self.last_event_id = event.event_id
            for sink in self._sinks:
                sink(event)
            for sub in self._by_bar.get(event.bar_id, ()):
                sub._push(event)
        self._log.extend(events)
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
        self._pending: deque[StatusEvent] = deque()  # one-bar subscribers
        self._ready = asyncio.Event()
        self._ticked = False
        self._lagged = False
        self._closed = False

    async def next(self) -> list[StatusEvent] | None:
        """The events delivered since the last call, waiting for at least one.

        Returns ``[]`` when :meth:`Relay.tick` came first (time for a
        keepalive) and None once the subscription is closed or the relay has
        stopped; raises SubscriptionLagged when this subscriber fell too far
        behind.
        """
        while True:
            events = self._take()
            if events:
                return events
            if self._closed:
                return None
            if self._ticked:
                self._ticked = False
                return []
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        """Leave the relay and wake a pending :meth:`next` (idempotent)."""
        self._closed = True
        self._ready.set()
        self._relay._unsubscribe(self)

    def _push(self, event: StatusEvent) -> None:
        if len(self._pending) >= self._relay.config.backlog:
            self._lagged = True
        else:
            self._pending.append(event)
        self._ready.set()

    def _take(self) -> list[StatusEvent]:
        if self._lagged:
            raise SubscriptionLagged()
        if self.bar_id is None:
            relay = self._relay
            end = relay._log_base + len(relay._log)
            # The log keeps at least the last `backlog` events, so a subscriber
            # within that lag always finds its cursor in it.
            if end - self._cursor > relay.config.backlog:
                self._lagged = True
                raise SubscriptionLagged()
            events = relay._log[self._cursor - relay._log_base :]
            self._cursor = end
        else:
            events = list(self._pending)
            self._pending.clear()
        if events and events[0].event_id <= self._after:
            events = [e for e in events if e.event_id > self._after]
        if events:
            self._after = events[-1].event_id
        return events


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
