"""The relay's SSE request parsers (mpesa_sync/relay/sse.py), without a database.

No database (marked ``no_database``).
"""

from __future__ import annotations

import uuid

import pytest

from mpesa_sync.errors import HttpError
from mpesa_sync.relay.events import (
    MAX_EVENT_ID,
    Position,
)
from mpesa_sync.relay.sse import parse_bar_id, parse_last_event_id
from tests.support.events import GENERATION

pytestmark = pytest.mark.no_database


def test_sse_request_parsers() -> None:
    assert parse_bar_id(None) is None
    assert parse_bar_id(str(uuid.UUID(int=3))) == uuid.UUID(int=3)
    assert parse_last_event_id(None) is None and parse_last_event_id(" ") is None
    assert parse_last_event_id(" 17 ") == Position(17)
    assert parse_last_event_id(f"{GENERATION}:3") == Position(3, GENERATION)
    for bad in ("abc", "-3", str(MAX_EVENT_ID + 1), "1" * 20, "caf\xe9:1"):
        with pytest.raises(HttpError) as caught:
            parse_last_event_id(bad)
        assert caught.value.status_code == 400
        assert bad not in caught.value.detail  # never echoed
    with pytest.raises(HttpError, match="malformed bar id"):
        parse_bar_id("42")
