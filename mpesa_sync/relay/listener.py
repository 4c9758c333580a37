"""The relay's core: one LISTEN connection, and every event handed on once.

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
  reads the events themselves from the table, through its
  :class:`~.log.LogCursor` (which checks the position and resets), so a
  lost, merged, repeated or forged notification can neither skip nor repeat
  an event. A hint for an id already delivered is dropped without a query.
* With no notification for ``idle_timeout`` it runs the same read, which is
  also the liveness check of an idle connection (TCP keepalives back it up).
* Any database error means reconnecting with exponential backoff and
  jitter; the relay never stops because the database went away.

Consumers are *sinks*, called synchronously and in order: item sinks (the
stdout writer, the metrics) get each event and reset, batch sinks (the
fan-out to SSE clients, :mod:`.fanout`) get each batch read, so that a
batch is encoded for the wire once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from time import monotonic
from typing import Any
from uuid import UUID

import psycopg

from mpesa_sync import db
from mpesa_sync.errors import ConfigError, DatabaseUnavailable, MpesaSyncError, first_line
from mpesa_sync.queries import query
from mpesa_sync.relay.events import FUTURE, LogState, Position, Reset, payload_event_id
from mpesa_sync.relay.log import (
    Item,
    LogCursor,
    Page,
    RecentEvents,
    read_log_state,
    read_page,
)

logger = logging.getLogger(__name__)

# The LISTEN connection's application_name: how an operator (or a test)
# finds it in pg_stat_activity.
APPLICATION_NAME = "mpesa-sync-relay"

Sink = Callable[[Item], None]
BatchSink = Callable[[Sequence[Item]], None]
AnyConnection = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class RelayConfig:
    """Timings and limits of a relay; the defaults suit production."""

    idle_timeout: float = 5.0  # read the table after this long without a hint
    wait_slice: float = 1.0  # longest single wait on the socket, so stop() is prompt
    backoff_initial: float = 0.1  # first reconnect delay; doubles up to backoff_max
    backoff_max: float = 5.0
    application_name: str = APPLICATION_NAME
    # An SSE client is closed when this much of its stream is queued in the
    # process, or when its socket has refused writes for max_blocked seconds.
    max_unsent: int = 256 * 1024
    max_blocked: float = 5.0


@dataclass
class RelayStats:
    """Counters since the relay started (served at /metrics)."""

    events: int = 0  # events handed on
    resets: int = 0  # times the relay's own position could not be honoured


class Relay:
    """Owns the LISTEN connection and the catch-up reads; hands events to its sinks."""

    def __init__(
        self, dsn: str, *, since: Position | None = None, config: RelayConfig | None = None
    ) -> None:
        self.dsn = dsn
        self.config = config or RelayConfig()
        self.connected = False
        self.stats = RelayStats()
        self.stopped = asyncio.Event()  # set once run() has returned
        self._since = since
        self._cursor = LogCursor(Position(0), anchored=True, on_reset=self._log_reset)
        self.recent = RecentEvents()  # what a resuming client may be replayed from
        self._started = False
        self._conn: AnyConnection | None = None
        self._sinks: list[Sink] = []
        self._batch_sinks: list[BatchSink] = []
        self._stop = asyncio.Event()

    @property
    def position(self) -> Position:
        """The last event handed on, in its log."""
        return self._cursor.position

    @property
    def last_event_id(self) -> int:
        return self._cursor.position.event_id

    @property
    def generation(self) -> UUID | None:
        return self._cursor.position.generation if self._started else None

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
            start = log.newest_event_id if self._since is None else self._since.event_id
            self._cursor.position = Position(start, log.generation)
            self.recent.start(self._cursor.position)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._started = True
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
            self.stopped.set()
            logger.info(
                "relay stopped after event %d", self.last_event_id, extra={"action": "relay_stop"}
            )

    def stop(self) -> None:
        """Ask :meth:`run` to return (within ``wait_slice``)."""
        self._stop.set()

    # -- consumers ----------------------------------------------------------------

    def add_sink(self, sink: Sink) -> None:
        """Call ``sink`` for every event and reset, in order, before the batch sinks."""
        self._sinks.append(sink)

    def add_batch_sink(self, sink: BatchSink) -> None:
        """Call ``sink`` with every batch of events read, and with every reset alone."""
        self._batch_sinks.append(sink)

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

        async def fetch(after: int) -> Page:
            return await read_page(conn, after)

        async with aclosing(self._cursor.read(fetch)) as pages:
            async for items in pages:
                self._deliver(items)

    def _log_reset(self, refused: Position, reason: str, log: LogState) -> None:
        self.stats.resets += 1
        logger.warning(
            "reset: position %s; carrying on live after %s",
            log.describe(refused, reason),
            Position(log.newest_event_id, log.generation),
            extra={"action": "relay_reset"},
        )

    def _deliver(self, items: list[Item]) -> None:
        self.recent.add(items)
        for item in items:
            for sink in self._sinks:
                sink(item)
        for batch_sink in self._batch_sinks:
            batch_sink(items)
        if not isinstance(items[0], Reset):
            self.stats.events += len(items)

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        except TimeoutError:
            pass


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
