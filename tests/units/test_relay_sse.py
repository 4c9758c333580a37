"""The relay's SSE parsers and frames, without a database.

No database (marked ``no_database``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from starlette.exceptions import HTTPException

from mpesa_sync.relay.events import (
    MAX_EVENT_ID,
    Position,
    StatusEvent,
)
from mpesa_sync.relay.sse import _Frames, parse_bar_id, parse_last_event_id

pytestmark = pytest.mark.no_database

GENERATION = uuid.UUID("0b5c7a9e-3d1f-4e2a-9c8b-7f6e5d4c3b2a")


def test_sse_request_parsers() -> None:
    assert parse_bar_id(None) is None
    assert parse_bar_id(str(uuid.UUID(int=3))) == uuid.UUID(int=3)
    assert parse_last_event_id(None) is None and parse_last_event_id(" ") is None
    assert parse_last_event_id(" 17 ") == Position(17)
    assert parse_last_event_id(f"{GENERATION}:3") == Position(3, GENERATION)
    for bad in ("abc", "-3", str(MAX_EVENT_ID + 1), "1" * 20, "caf\xe9:1"):
        with pytest.raises(HTTPException) as caught:
            parse_last_event_id(bad)
        assert caught.value.status_code == 400
        assert bad not in caught.value.detail  # never echoed
    with pytest.raises(HTTPException, match="malformed bar id"):
        parse_bar_id("42")


def test_frames_of_one_batch_are_joined_once_and_shared() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    events = [
        StatusEvent.from_row((i, uuid.UUID(int=i), True, "reconcile", at), GENERATION)
        for i in (1, 2)
    ]
    frames = _Frames(size=1)
    joined = frames.join(list(events))
    assert joined == events[0].sse + events[1].sse
    assert frames.join(list(events)) is joined  # the same bytes object, not joined again
    assert frames.join(events[:1]) is events[0].sse
    # Equal ids in another log (after a reset) are other objects: never the cached bytes.
    rows = [(e.event_id, e.bar_id, False, "x", at) for e in events]
    other = [StatusEvent.from_row(row, GENERATION) for row in rows]
    assert frames.join(other) == other[0].sse + other[1].sse != joined
    frames.join([*events, events[0]])  # evicts (size 1)
    assert frames.join(list(events)) is not joined
