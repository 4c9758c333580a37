"""What the relay hands on, and where a reader stands in the log.

- :class:`StatusEvent`: one event as a JSON line and an SSE frame. The fields
  are those of the ``mpesa_status`` notification payload (``event_id``,
  ``bar_id``, ``mpesa_enabled``, ``source``, ``at``). The relay builds events
  from ``mpesa_sync.status_events`` rows, never from payloads, so what it
  sends is what the table holds; ``at`` is always given in UTC.
- :class:`Position`: a reader's place in the log, ``GENERATION:EVENT_ID`` (the
  SSE ``id:`` of every event), or a bare ``EVENT_ID`` from older clients.
- :class:`LogState`: the log as ``mpesa_sync.event_log_v1`` describes it, and
  whether it can honour a position.
- :class:`Reset`: what a reader gets instead of events when its position
  cannot be honoured: re-read the state, then carry on from the new position.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from mpesa_sync.relay.wire import event_frame, reset_frame

MAX_EVENT_ID = 2**63 - 1

# Why a position cannot be honoured (the "reason" of a reset).
PRUNED = "pruned"  # the events after it were pruned
FUTURE = "future"  # it is past the newest event: the log was restored or replaced
OTHER_LOG = "other_log"  # it belongs to another log (another generation)

_POSITION = re.compile(
    r"(?:(?P<generation>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{12}):)?(?P<event_id>[0-9]{1,19})"
)


@dataclass(frozen=True, slots=True)
class Position:
    """A reader's place in the log: the last event it has, and of which log.

    ``generation`` is None for a bare event id, which older clients send; such
    a position is checked against the log's range only.
    """

    event_id: int
    generation: UUID | None = None

    @classmethod
    def parse(cls, text: str) -> Position:
        """``EVENT_ID`` or ``GENERATION:EVENT_ID``; ValueError (never quoting
        ``text``) for anything else."""
        match = _POSITION.fullmatch(text.strip()) if text.isascii() else None
        if match is None or int(match["event_id"]) > MAX_EVENT_ID:
            raise ValueError("expected EVENT_ID or GENERATION:EVENT_ID")
        generation = match["generation"]
        return cls(int(match["event_id"]), UUID(generation) if generation else None)

    def __str__(self) -> str:
        return f"{self.generation}:{self.event_id}" if self.generation else str(self.event_id)


@dataclass(frozen=True, slots=True)
class LogState:
    """``mpesa_sync.event_log_v1``: which log this is and which positions it keeps."""

    generation: UUID
    pruned_through: int
    oldest_event_id: int | None
    newest_event_id: int

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> LogState:
        return cls(
            row["generation"], row["pruned_through"], row["oldest_event_id"], row["newest_event_id"]
        )

    def invalid(self, position: Position) -> str | None:
        """Why ``position`` cannot be honoured (PRUNED, FUTURE, OTHER_LOG), or None."""
        if position.generation is not None and position.generation != self.generation:
            return OTHER_LOG
        if position.event_id > self.newest_event_id:
            return FUTURE
        if position.event_id < self.pruned_through:
            return PRUNED
        return None

    def describe(self, position: Position, reason: str) -> str:
        """One line on why ``position`` is refused, for a person."""
        if reason == OTHER_LOG:
            return (
                f"{position} belongs to another event log, or its event was replaced "
                f"(this log is {self.generation})"
            )
        if reason == FUTURE:
            return f"{position} is past the newest event ({self.newest_event_id})"
        oldest = (
            f"the oldest kept is {self.oldest_event_id}"
            if self.oldest_event_id is not None
            else "none is kept"
        )
        return (
            f"{position} is older than the oldest event retained: "
            f"events up to {self.pruned_through} were pruned and {oldest}"
        )


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A committed change of one bar's ``mpesa_enabled``.

    ``line`` (the JSON text) and ``sse`` (the Server-Sent Events frame, whose
    ``id:`` is the position ``GENERATION:EVENT_ID``) are encoded once here and
    shared by every consumer.
    """

    event_id: int
    bar_id: UUID
    mpesa_enabled: bool
    source: str
    at: datetime
    line: str
    sse: bytes

    @classmethod
    def from_row(cls, row: Mapping[str, Any], generation: UUID) -> StatusEvent:
        """An event from a row's ``event_id, bar_id, mpesa_enabled, source, at``."""
        event_id, bar_id, mpesa_enabled, source, at = (
            row["event_id"],
            row["bar_id"],
            row["mpesa_enabled"],
            row["source"],
            row["at"],
        )
        line = json.dumps(
            {
                "event_id": event_id,
                "bar_id": str(bar_id),
                "mpesa_enabled": mpesa_enabled,
                "source": source,
                "at": at.astimezone(UTC).isoformat(),
            }
        )
        return cls(
            event_id,
            bar_id,
            mpesa_enabled,
            source,
            at,
            line,
            event_frame(generation, event_id, line),
        )


@dataclass(frozen=True, slots=True)
class Reset:
    """A position that could not be honoured, and where the reader goes on from.

    The reader must re-read whatever it derives from events, then carry on:
    what follows a reset is every event after ``newest_event_id``.
    ``line`` is the stdout line and the SSE frame's data; the frame's ``id:``
    is the new position, so an EventSource resumes from there.
    """

    reason: str
    newest_event_id: int
    generation: UUID
    line: str
    sse: bytes

    @classmethod
    def of(cls, reason: str, log: LogState) -> Reset:
        line = json.dumps(
            {
                "reset": True,
                "reason": reason,
                "newest_event_id": log.newest_event_id,
                "generation": str(log.generation),
            }
        )
        sse = reset_frame(log.generation, log.newest_event_id, line)
        return cls(reason, log.newest_event_id, log.generation, line, sse)

    @property
    def position(self) -> Position:
        return Position(self.newest_event_id, self.generation)


def payload_event_id(payload: str) -> int | None:
    """The ``event_id`` a notification announces, or None if it has none.

    Only a hint: the relay reads the event itself from the table.
    """
    try:
        value = json.loads(payload)["event_id"]
    except (ValueError, TypeError, KeyError):
        return None
    return value if isinstance(value, int) else None
