"""The fan-out (mpesa_sync/relay/fanout.py): who gets which bytes, encoded
once; a client past its bound is closed; keepalives are staggered.

No database (marked ``no_database``). The transports are stand-ins that
record what is written to them.
"""

from __future__ import annotations

import uuid

import pytest

from mpesa_sync.relay.events import LogState, Reset
from mpesa_sync.relay.fanout import SLOTS, Client, Hub
from mpesa_sync.relay.wire import KEEPALIVE_FRAME
from tests.support.events import GENERATION
from tests.support.events import status_event as event

pytestmark = pytest.mark.no_database

BAR_A, BAR_B, BAR_C = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)


class Recorder:
    """A transport that keeps what it was given; ``queued`` plays the unsent bytes."""

    def __init__(self, queued: int = 0) -> None:
        self.writes: list[bytes] = []
        self.queued = queued
        self.aborted = False
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.queued

    def is_closing(self) -> bool:
        return self.aborted or self.closed

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True


def client(hub: Hub, bar_id: uuid.UUID | None, after: int = 0, queued: int = 0) -> Recorder:
    transport = Recorder(queued)
    hub.add(Client(transport, bar_id, after))  # type: ignore[arg-type]
    return transport


def test_each_client_gets_its_bars_frames_joined_once_and_shared() -> None:
    hub = Hub()
    everything = [client(hub, None) for _ in range(3)]
    on_a = [client(hub, BAR_A) for _ in range(2)]
    on_b = client(hub, BAR_B)
    on_c = client(hub, BAR_C)
    batch = [event(1, BAR_A), event(2, BAR_B), event(3, BAR_A)]
    hub.publish(batch)
    joined = everything[0].writes[0]
    assert joined == batch[0].sse + batch[1].sse + batch[2].sse
    assert all(t.writes == [joined] and t.writes[0] is joined for t in everything)
    a_frames = on_a[0].writes[0]
    assert a_frames == batch[0].sse + batch[2].sse and on_a[1].writes[0] is a_frames
    assert on_b.writes == [batch[1].sse] and on_b.writes[0] is batch[1].sse
    assert on_c.writes == []
    assert hub.count == 7


def test_events_a_client_has_are_not_sent_again() -> None:
    hub = Hub()
    late = client(hub, None, after=2)  # its replay (or a reset) covered 1 and 2
    hub.publish([event(1, BAR_A), event(2, BAR_A), event(3, BAR_A)])
    assert late.writes == [event(3, BAR_A).sse]


def test_a_reset_reaches_every_client_and_moves_it() -> None:
    hub = Hub()
    transports = [client(hub, None), client(hub, BAR_A)]
    log = LogState(GENERATION, pruned_through=0, oldest_event_id=1, newest_event_id=9)
    reset = Reset.of("other_log", log)
    hub.publish([reset])
    hub.publish([event(9, BAR_A), event(10, BAR_A)])  # 9 is covered by the reset
    for transport in transports:
        assert transport.writes == [reset.sse, event(10, BAR_A).sse]


def test_a_client_past_its_bound_is_closed_and_counted_and_the_others_go_on() -> None:
    hub = Hub(max_unsent=1000)
    stuck = client(hub, BAR_A, queued=1001)
    fine = client(hub, BAR_A, queued=1000)
    hub.publish([event(1, BAR_A)])
    hub.publish([event(2, BAR_A)])
    assert stuck.aborted and stuck.writes == [event(1, BAR_A).sse]
    assert not fine.aborted and fine.writes == [event(1, BAR_A).sse, event(2, BAR_A).sse]
    assert hub.stats.dropped == 1 and hub.count == 1


def test_a_client_blocked_too_long_is_closed() -> None:
    hub = Hub(max_blocked=0.0)
    transport = Recorder()
    blocked = Client(transport, None, 0)  # type: ignore[arg-type]
    hub.add(blocked)
    hub.paused(blocked)
    hub.tick()
    assert transport.aborted and hub.stats.dropped == 1 and hub.count == 0


def test_a_replaying_client_gets_what_arrived_meanwhile_after_its_replay() -> None:
    hub = Hub()
    transport = Recorder()
    replaying = Client(transport, BAR_A, 0)  # type: ignore[arg-type]
    replaying.pending = []
    hub.add(replaying)
    hub.publish([event(5, BAR_A)])
    hub.publish([event(6, BAR_A)])
    assert transport.writes == []  # held while the replay is written
    hub.send(replaying, event(4, BAR_A).sse)  # the replay, up to 5 (where it joined)
    hub.go_live(replaying, after=5)
    assert transport.writes == [event(4, BAR_A).sse, event(6, BAR_A).sse]


def test_keepalives_are_staggered_one_slot_a_tick() -> None:
    hub = Hub()
    transports = [client(hub, None) for _ in range(SLOTS * 3)]
    hub.tick()
    assert sum(t.writes == [KEEPALIVE_FRAME] for t in transports) == 3
    for _ in range(SLOTS - 1):
        hub.tick()
    assert all(t.writes == [KEEPALIVE_FRAME] for t in transports)  # each once a period
