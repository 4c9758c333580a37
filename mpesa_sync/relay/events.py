"""One status event as the relay hands it on: a JSON line and an SSE frame.

The fields are those of the ``mpesa_status`` notification payload
(``event_id``, ``bar_id``, ``mpesa_enabled``, ``source``, ``at``). The relay
builds events from ``mpesa_sync.status_events`` rows, never from payloads, so
what it sends is what the table holds; ``at`` is always given in UTC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A committed change of one bar's ``mpesa_enabled``.

    ``line`` (the JSON text) and ``sse`` (the Server-Sent Events frame) are
    encoded once here and shared by every consumer.
    """

    event_id: int
    bar_id: UUID
    mpesa_enabled: bool
    source: str
    at: datetime
    line: str
    sse: bytes

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> StatusEvent:
        """An event from a ``relay_events_between`` row."""
        event_id, bar_id, mpesa_enabled, source, at = row
        line = json.dumps(
            {
                "event_id": event_id,
                "bar_id": str(bar_id),
                "mpesa_enabled": mpesa_enabled,
                "source": source,
                "at": at.astimezone(UTC).isoformat(),
            }
        )
        sse = f"id: {event_id}\ndata: {line}\n\n".encode()
        return cls(event_id, bar_id, mpesa_enabled, source, at, line, sse)


def payload_event_id(payload: str) -> int | None:
    """The ``event_id`` a notification announces, or None if it has none.

    Only a hint: the relay reads the event itself from the table.
    """
    try:
        value = json.loads(payload)["event_id"]
    except (ValueError, TypeError, KeyError):
        return None
    return value if isinstance(value, int) else None
