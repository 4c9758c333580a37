"""The worker parent's helpers (mpesa_sync/relay/workers.py), without a database.

No database (marked ``no_database``).
"""

from __future__ import annotations

import json
import uuid

import pytest

from mpesa_sync.errors import ConfigError
from mpesa_sync.relay.workers import _position_after, parse_worker

pytestmark = pytest.mark.no_database


def test_the_stdout_position_follows_events_and_resets() -> None:
    generation = uuid.UUID(int=9)
    event = json.dumps({"event_id": 42, "bar_id": "b", "mpesa_enabled": True})
    reset = json.dumps({"reset": True, "newest_event_id": 7, "generation": str(generation)})
    assert _position_after(event) == "42"
    assert _position_after(reset) == f"{generation}:7"
    assert _position_after("not json") is None
    assert _position_after(json.dumps({"event_id": "42"})) is None


def test_a_worker_is_told_which_it_is() -> None:
    assert parse_worker("0/2") == (0, 2)
    assert parse_worker("3/4") == (3, 4)
    for bad in ("2/2", "x/2", "1", "-1/2", "1/"):
        with pytest.raises(ConfigError, match="is not I/N"):
            parse_worker(bad)
