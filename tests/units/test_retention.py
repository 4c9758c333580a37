"""Retention's duration parser (mpesa_sync/retention.py).

No database (marked ``no_database``).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from mpesa_sync import retention

pytestmark = pytest.mark.no_database


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        (" 45s ", timedelta(seconds=45)),
        ("36500d", timedelta(days=36500)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert retention.parse_duration(text) == expected
