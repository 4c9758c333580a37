"""The relay's events, positions and resets, without a database.

No database (marked ``no_database``).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from mpesa_sync.relay.events import (
    FUTURE,
    MAX_EVENT_ID,
    OTHER_LOG,
    PRUNED,
    LogState,
    Position,
    Reset,
    StatusEvent,
    payload_event_id,
)
from tests.support.events import GENERATION, status_row

pytestmark = pytest.mark.no_database


def test_status_event_is_encoded_once_as_a_line_and_a_frame() -> None:
    bar = uuid.UUID(int=7)
    at = datetime(2026, 11, 26, 9, 30, tzinfo=timezone(timedelta(hours=3)))
    event = StatusEvent.from_row(status_row(42, bar, True, "credentials", at), GENERATION)
    assert json.loads(event.line) == {
        "event_id": 42,
        "bar_id": str(bar),
        "mpesa_enabled": True,
        "source": "credentials",
        "at": "2026-11-26T06:30:00+00:00",  # always UTC
    }
    assert event.sse == f"id: {GENERATION}:42\ndata: {event.line}\n\n".encode()


def test_a_reset_is_a_line_and_a_named_frame_whose_id_is_the_new_position() -> None:
    log = LogState(GENERATION, pruned_through=10, oldest_event_id=11, newest_event_id=57)
    reset = Reset.of(PRUNED, log)
    assert json.loads(reset.line) == {
        "reset": True,
        "reason": "pruned",
        "newest_event_id": 57,
        "generation": str(GENERATION),
    }
    assert reset.sse == f"event: reset\nid: {GENERATION}:57\ndata: {reset.line}\n\n".encode()
    assert reset.position == Position(57, GENERATION)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [('{"event_id": 5, "bar_id": "x"}', 5), ('{"event_id": "5"}', None), ("{}", None), ("[", None)],
)
def test_a_notification_is_only_a_hint_of_an_event_id(payload: str, expected: int | None) -> None:
    assert payload_event_id(payload) == expected


def test_positions_parse_with_or_without_a_generation() -> None:
    assert Position.parse(" 17 ") == Position(17)
    assert Position.parse(f"{GENERATION}:17") == Position(17, GENERATION)
    assert Position.parse(f"{str(GENERATION).upper()}:0") == Position(0, GENERATION)
    assert str(Position(17, GENERATION)) == f"{GENERATION}:17" and str(Position(17)) == "17"
    assert Position.parse(str(MAX_EVENT_ID)) == Position(MAX_EVENT_ID)
    bad = ["abc", "-3", "", str(MAX_EVENT_ID + 1), "1" * 20, f"{GENERATION}:", "x:1", "١٢", "17é"]
    for text in bad:
        with pytest.raises(ValueError) as caught:
            Position.parse(text)
        assert text not in str(caught.value) or not text


@pytest.mark.parametrize(
    ("position", "reason"),
    [
        (Position(10), None),  # exactly where the prune stopped: the next event is kept
        (Position(57, GENERATION), None),
        (Position(30, GENERATION), None),
        (Position(9), PRUNED),
        (Position(0, GENERATION), PRUNED),
        (Position(58), FUTURE),
        (Position(30, uuid.UUID(int=1)), OTHER_LOG),
    ],
)
def test_which_positions_a_log_honours(position: Position, reason: str | None) -> None:
    log = LogState(GENERATION, pruned_through=10, oldest_event_id=12, newest_event_id=57)
    assert log.invalid(position) == reason
    if reason is not None:
        assert str(position) in log.describe(position, reason)
