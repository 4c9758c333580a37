"""The fan-out: from an index of bar -> clients, each batch written straight
to each client's transport.

Per batch of events the :class:`Hub` joins the frames once for the clients
of every bar and once per bar that has clients, and writes the same bytes
object to each client's transport: no task, queue or coroutine per client
per event. A client costs one small object and its socket.

A client that cannot keep up is closed rather than waited for, and counted
(``mpesa_sync_relay_dropped_clients_total``): when more than ``max_unsent``
bytes of its stream are queued in the process, or when its socket has
refused writes (flow control paused) for ``max_blocked`` seconds. That
includes a client that never reads at all. It reconnects with Last-Event-ID
and catches up from the table; the clients beside it never wait for it.

Keepalives are staggered: clients are spread over a ring of slots, and each
tick writes a keepalive to one slot, so that a keepalive period costs the
same small burst every tick rather than one burst for every client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from time import monotonic
from uuid import UUID

from mpesa_sync.relay.events import Reset, StatusEvent
from mpesa_sync.relay.log import Item
from mpesa_sync.relay.wire import KEEPALIVE_FRAME

logger = logging.getLogger(__name__)

SLOTS = 16  # keepalive slots: each tick serves one


@dataclass
class ClientStats:
    """Counters of the SSE clients since the relay started (served at /metrics)."""

    dropped: int = 0  # closed for falling behind (unsent data past the bound, or blocked)
    client_resets: int = 0  # reset frames sent to clients, at connect or in a replay
    refused: int = 0  # connections refused at the client cap


class Client:
    """One open stream: its transport, its bar (None: every bar), and the last
    event id it has or must not get again (``after``).

    While ``pending`` is a list the client is still replaying from the table:
    live items wait there, and :meth:`Hub.go_live` sends them after the replay.
    """

    __slots__ = ("after", "bar_id", "blocked_since", "pending", "slot", "transport")

    def __init__(self, transport: asyncio.WriteTransport, bar_id: UUID | None, after: int) -> None:
        self.transport = transport
        self.bar_id = bar_id
        self.after = after
        self.pending: list[Item] | None = None
        self.blocked_since: float | None = None
        self.slot = 0


class Hub:
    """The index of open streams, and the writes to them."""

    def __init__(self, *, max_unsent: int = 256 * 1024, max_blocked: float = 5.0) -> None:
        self.max_unsent = max_unsent
        self.max_blocked = max_blocked
        self.stats = ClientStats()
        self._all: set[Client] = set()
        self._by_bar: dict[UUID, set[Client]] = {}
        self._slots: list[set[Client]] = [set() for _ in range(SLOTS)]
        self._next_slot = 0
        self._tick_slot = 0
        self._blocked: set[Client] = set()
        self._count = 0

    @property
    def count(self) -> int:
        """Open streams."""
        return self._count

    def add(self, client: Client) -> None:
        if client.bar_id is None:
            self._all.add(client)
        else:
            self._by_bar.setdefault(client.bar_id, set()).add(client)
        client.slot = self._next_slot
        self._next_slot = (self._next_slot + 1) % SLOTS
        self._slots[client.slot].add(client)
        self._count += 1

    def remove(self, client: Client) -> None:
        """Forget ``client`` (idempotent); its connection is closed by its owner."""
        group = self._all if client.bar_id is None else self._by_bar.get(client.bar_id)
        if group is None or client not in group:
            return
        group.discard(client)
        if client.bar_id is not None and not group:
            del self._by_bar[client.bar_id]
        self._slots[client.slot].discard(client)
        self._blocked.discard(client)
        self._count -= 1

    # -- writing ---------------------------------------------------------------------

    def publish(self, items: Sequence[Item]) -> None:
        """Hand a batch read by the relay (events, or one reset) to every client it is for."""
        if not items:
            return
        if isinstance(items[0], Reset):
            self._reset(items[0])
            return
        events = [item for item in items if isinstance(item, StatusEvent)]
        lagging: list[Client] = []
        if self._all:
            self._write_all(self._all, events, _join(events), lagging)
        if self._by_bar:
            by_bar: dict[UUID, list[StatusEvent]] = {}
            for event in events:
                if event.bar_id in self._by_bar:
                    by_bar.setdefault(event.bar_id, []).append(event)
            for bar_id, mine in by_bar.items():
                self._write_all(self._by_bar[bar_id], mine, _join(mine), lagging)
        for client in lagging:
            self.drop(client)

    def _write_all(
        self,
        clients: set[Client],
        events: list[StatusEvent],
        frames: bytes,
        lagging: list[Client],
    ) -> None:
        first = events[0].event_id
        limit = self.max_unsent
        for client in clients:
            if client.pending is None and client.after < first:
                transport = client.transport
                transport.write(frames)
                if transport.get_write_buffer_size() > limit:
                    lagging.append(client)
            elif client.pending is not None:
                client.pending.extend(events)
                if len(client.pending) * 256 > limit:  # about 256 bytes a frame
                    lagging.append(client)
            else:
                wanted = [e for e in events if e.event_id > client.after]
                if wanted:
                    client.transport.write(_join(wanted))
                    if client.transport.get_write_buffer_size() > limit:
                        lagging.append(client)

    def _reset(self, reset: Reset) -> None:
        for client in [*self._all, *(c for group in self._by_bar.values() for c in group)]:
            if client.pending is not None:
                client.pending.append(reset)
            else:
                client.after = reset.newest_event_id
                client.transport.write(reset.sse)

    def send(self, client: Client, data: bytes) -> None:
        """Write ``data`` to one client now (a replay read for it alone)."""
        client.transport.write(data)

    def go_live(self, client: Client, after: int) -> None:
        """End ``client``'s replay at ``after``: send what arrived live meanwhile."""
        pending, client.pending = client.pending or [], None
        client.after = after
        frames = []
        for item in pending:
            if isinstance(item, Reset):
                client.after = item.newest_event_id
                frames.append(item.sse)
            elif item.event_id > client.after:
                client.after = item.event_id
                frames.append(item.sse)
        if frames:
            client.transport.write(b"".join(frames))

    def drop(self, client: Client) -> None:
        """Close a client that fell behind; it resumes with Last-Event-ID."""
        if client.transport.is_closing():
            return
        self.stats.dropped += 1
        self.remove(client)
        client.transport.abort()
        logger.info(
            "dropped an SSE client that fell behind; it resumes with Last-Event-ID",
            extra={"action": "sse_client_lagged"},
        )

    # -- flow control and time ---------------------------------------------------------

    def paused(self, client: Client) -> None:
        """The client's socket refuses writes (its transport paused the protocol)."""
        client.blocked_since = monotonic()
        self._blocked.add(client)

    def resumed(self, client: Client) -> None:
        client.blocked_since = None
        self._blocked.discard(client)

    def tick(self) -> None:
        """Keepalives for the next slot; close clients blocked for too long."""
        slot = self._slots[self._tick_slot]
        self._tick_slot = (self._tick_slot + 1) % SLOTS
        for client in slot:
            if client.pending is None:
                client.transport.write(KEEPALIVE_FRAME)
        now = monotonic()
        stuck = [
            c
            for c in self._blocked
            if c.blocked_since is not None and now - c.blocked_since > self.max_blocked
        ]
        for client in stuck:
            self.drop(client)

    async def keepalives(self, period: float) -> None:
        """Run :meth:`tick` so that each client gets a keepalive every ``period``."""
        while True:
            await asyncio.sleep(period / SLOTS)
            self.tick()

    def close_all(self) -> None:
        """End every stream (the relay stopped): flush what is queued, then close."""
        clients = [*self._all, *(c for group in self._by_bar.values() for c in group)]
        for client in clients:
            self.remove(client)
            client.transport.close()


def _join(events: list[StatusEvent]) -> bytes:
    return events[0].sse if len(events) == 1 else b"".join(e.sse for e in events)
