"""Which database failures deserve another attempt, and how long to wait."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import tenacity

from mpesa_sync.errors import DatabaseUnavailable

# Failures that say nothing about the request itself: another attempt in a
# new transaction (and, after a lost connection, on a new connection) can
# succeed. 55P03 is a lock_timeout: the lock holder is usually a short
# transaction, so waiting and trying again is the better first answer; a
# holder that never lets go ends in the alert after the last attempt.
TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
        "57P01",  # admin_shutdown (pg_terminate_backend, a fast shutdown)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, shutting down)
    }
)


def is_transient(exc: BaseException) -> bool:
    """True for a serialization failure, a deadlock, a lock timeout or a lost connection."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        # No SQLSTATE: the driver lost the connection (server gone, socket closed).
        return isinstance(exc, psycopg.OperationalError)
    return state in TRANSIENT_SQLSTATES or state.startswith("08")  # 08: connection exceptions


def sqlstate_of(exc: BaseException) -> str | None:
    """The exception's SQLSTATE, if the server sent one."""
    return exc.sqlstate if isinstance(exc, psycopg.Error) else None


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``attempts`` tries, waiting exponentially longer (with jitter) between them."""

    attempts: int = 3
    initial_wait: float = 0.1  # seconds before the second attempt, doubled each time
    max_wait: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def retrying(
        self,
        *,
        retry_if: Callable[[BaseException], bool] = is_transient,
        on_retry: Callable[[tenacity.RetryCallState], None] | None = None,
    ) -> tenacity.Retrying:
        """A tenacity loop; after the last attempt the last exception is re-raised."""
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            # initial_wait * 2**(n-1), capped, plus up to initial_wait of jitter
            wait=tenacity.wait_exponential(multiplier=self.initial_wait, max=self.max_wait)
            + tenacity.wait_random(0, self.initial_wait),
            retry=tenacity.retry_if_exception(retry_if),
            before_sleep=on_retry,
            reraise=True,
        )
