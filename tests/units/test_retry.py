"""Which failures are retried (mpesa_sync/retry.py).

No database (marked ``no_database``).
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors

from mpesa_sync import errors
from mpesa_sync.retry import RetryPolicy, is_transient

pytestmark = pytest.mark.no_database


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (pg_errors.SerializationFailure(), True),
        (pg_errors.DeadlockDetected(), True),
        (pg_errors.LockNotAvailable(), True),
        (pg_errors.AdminShutdown(), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (errors.DatabaseUnavailable(), True),
        (pg_errors.CheckViolation(), False),
        (pg_errors.InvalidParameterValue(), False),
        (pg_errors.QueryCanceled(), False),
        (errors.ConfigError("invalid DSN"), False),
        (ValueError("not a database error"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_which_failures_are_retried(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_a_retry_policy_needs_one_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(attempts=0)
