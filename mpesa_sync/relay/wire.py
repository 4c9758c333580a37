"""What the relay puts on the wire: SSE frames and the bytes of HTTP answers.

Everything here is bytes built once and shared: an event's frame is encoded
when the event is read (:mod:`.events`) and the same object is written to
every client that gets it.

- An event: ``id: GENERATION:EVENT_ID`` and ``data:`` its JSON line.
- A reset: ``event: reset``, its ``id:`` the new position, ``data:`` the
  reset line.
- ``retry: 1000`` opens every stream; ``: keepalive`` keeps idle ones open.

A stream's body is delimited by closing the connection (no chunking), so
that a frame goes out exactly as it was encoded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from http import HTTPStatus
from uuid import UUID

# An EventSource waits this long before it reconnects after the stream ends.
RETRY_FRAME = b"retry: 1000\n\n"
KEEPALIVE_FRAME = b": keepalive\n\n"
STREAM_HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),  # nginx: do not buffer the stream
    ("Connection", "close"),  # the body ends when the stream does
)
SERVER = "mpesa-sync"


def event_frame(generation: UUID, event_id: int, line: str) -> bytes:
    return f"id: {generation}:{event_id}\ndata: {line}\n\n".encode()


def reset_frame(generation: UUID, newest_event_id: int, line: str) -> bytes:
    return f"event: reset\nid: {generation}:{newest_event_id}\ndata: {line}\n\n".encode()


def response_head(
    status: int, headers: Iterable[tuple[str, str]], *, length: int | None = None
) -> bytes:
    """The status line and headers of an answer, with Content-Length when given."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Server: {SERVER}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_body(value: object) -> bytes:
    return json.dumps(value).encode()
