"""Status events built in memory, for the tests of the relay's pure parts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from mpesa_sync.relay.events import StatusEvent

GENERATION = uuid.UUID("0b5c7a9e-3d1f-4e2a-9c8b-7f6e5d4c3b2a")
AT = datetime(2026, 1, 1, tzinfo=UTC)


def status_row(
    event_id: int,
    bar_id: uuid.UUID,
    enabled: bool = True,
    source: str = "credentials",
    at: datetime = AT,
) -> dict[str, Any]:
    """A status_events row as psycopg's dict_row gives it."""
    return {
        "event_id": event_id,
        "bar_id": bar_id,
        "mpesa_enabled": enabled,
        "source": source,
        "at": at,
    }


def status_event(event_id: int, bar_id: uuid.UUID) -> StatusEvent:
    return StatusEvent.from_row(status_row(event_id, bar_id), GENERATION)
