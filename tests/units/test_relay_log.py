"""The relay's memory of recent events (mpesa_sync/relay/log.py): what a
resuming client may be replayed from without a query, and what not.

No database (marked ``no_database``).
"""

from __future__ import annotations

import uuid

import pytest

from mpesa_sync.relay.events import LogState, Position, Reset, StatusEvent
from mpesa_sync.relay.log import RecentEvents
from tests.support.events import GENERATION, status_event

pytestmark = pytest.mark.no_database

BAR_A, BAR_B = uuid.UUID(int=1), uuid.UUID(int=2)


def event(event_id: int, bar_id: uuid.UUID = BAR_A) -> StatusEvent:
    return status_event(event_id, bar_id)


def ids(events: list[StatusEvent] | None) -> list[int] | None:
    return None if events is None else [e.event_id for e in events]


def test_positions_since_the_start_are_replayed_from_memory() -> None:
    recent = RecentEvents()
    recent.start(Position(10, GENERATION))
    assert ids(recent.after(Position(10, GENERATION), None)) == []
    recent.add([event(12), event(13, BAR_B), event(15)])  # ids may have gaps
    assert ids(recent.after(Position(10, GENERATION), None)) == [12, 13, 15]
    assert ids(recent.after(Position(13, GENERATION), None)) == [15]
    assert ids(recent.after(Position(11, GENERATION), BAR_A)) == [12, 15]
    assert ids(recent.after(Position(15, GENERATION), None)) == []


@pytest.mark.parametrize(
    "position",
    [
        Position(9, GENERATION),  # before what the relay holds: the table knows
        Position(16, GENERATION),  # past what it handed on
        Position(12),  # a bare id names no log
        Position(12, uuid.UUID(int=5)),  # another log
    ],
)
def test_other_positions_are_left_to_the_table(position: Position) -> None:
    recent = RecentEvents()
    recent.start(Position(10, GENERATION))
    recent.add([event(12), event(15)])
    assert recent.after(position, None) is None


def test_trimming_moves_the_start_and_a_reset_empties_it() -> None:
    recent = RecentEvents(size=2)
    recent.start(Position(0, GENERATION))
    recent.add([event(i) for i in range(1, 6)])  # past 2 x size: keeps the last 2
    assert recent.after(Position(2, GENERATION), None) is None
    assert ids(recent.after(Position(3, GENERATION), None)) == [4, 5]
    log = LogState(GENERATION, pruned_through=0, oldest_event_id=1, newest_event_id=9)
    recent.add([Reset.of("future", log)])
    assert recent.after(Position(4, GENERATION), None) is None
    assert ids(recent.after(Position(9, GENERATION), None)) == []
