"""The relay listener's reconnect backoff.

No database (marked ``no_database``).
"""

from __future__ import annotations

import pytest

from mpesa_sync.relay.listener import _Backoff

pytestmark = pytest.mark.no_database


def test_reconnect_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = _Backoff(0.1, 1.0)
    delays = [backoff.next() for _ in range(6)]
    caps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    backoff.reset()
    assert backoff.next() <= 0.1
