"""The connection boundary without a server: DSNs, and driver errors
becoming ours (mpesa_sync/db.py).

No database (marked ``no_database``).
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors

from mpesa_sync import db, errors, migrations

pytestmark = pytest.mark.no_database


def test_yoyo_url_round_trips_awkward_dsns() -> None:
    url = migrations.yoyo_url("host=/var/run/postgresql port=5433 dbname=app user=me password=p@ss")
    assert url == (
        "postgresql+psycopg://me:p%40ss@/app?host=%2Fvar%2Frun%2Fpostgresql&port=5433"
        "&schema=mpesa_sync_yoyo"
    )
    assert migrations.yoyo_url("postgresql://u@db.example:6543/x?sslmode=require") == (
        "postgresql+psycopg://u@db.example:6543/x?sslmode=require&schema=mpesa_sync_yoyo"
    )
    # yoyo's tables where releases before 0006 kept them
    assert migrations.yoyo_url("postgresql://u@h/x", history_schema=None) == (
        "postgresql+psycopg://u@h/x"
    )


def test_describe_names_the_database_never_the_password() -> None:
    text = db.describe("postgresql://me:hunter2secret@db.example:6543/app")
    assert text == "database 'app' at db.example:6543"
    assert db.describe("not a dsn ===") == "the database"


@pytest.mark.parametrize("call", [migrations.yoyo_url, db.connect], ids=["yoyo_url", "connect"])
def test_an_invalid_dsn_is_a_config_error_with_its_cause(call: object) -> None:
    with pytest.raises(errors.ConfigError, match="invalid DSN") as caught:
        call("not a dsn ===")  # type: ignore[operator]
    assert isinstance(caught.value.__cause__, psycopg.ProgrammingError)


def test_an_unreachable_server_is_database_unavailable_with_its_cause() -> None:
    with pytest.raises(errors.DatabaseUnavailable, match="cannot connect to") as caught:
        db.connect("postgresql://nobody:pw-secret@127.0.0.1:1/none?connect_timeout=2")
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    assert "pw-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("driver_error", "expected"),
    [
        (
            psycopg.OperationalError("server closed the connection unexpectedly"),
            errors.DatabaseUnavailable(
                "lost the connection to database 'app' at h:5432: "
                "server closed the connection unexpectedly"
            ),
        ),
        (
            pg_errors.AdminShutdown("terminating connection due to administrator command"),
            errors.DatabaseUnavailable(
                "lost the connection to database 'app' at h:5432: terminating connection due "
                "to administrator command (SQLSTATE 57P01)"
            ),
        ),
        (
            pg_errors.InsufficientPrivilege("permission denied for table bars"),
            errors.DatabaseError(
                "database error: permission denied for table bars (SQLSTATE 42501)",
                sqlstate="42501",
            ),
        ),
        (
            pg_errors.CheckViolation("violates check constraint\nDETAIL:  Failing row (...)"),
            errors.DatabaseError(
                "database error: violates check constraint (SQLSTATE 23514)", sqlstate="23514"
            ),
        ),
    ],
    ids=["lost", "terminated", "privilege", "check"],
)
def test_translate_maps_driver_errors_to_ours(
    driver_error: psycopg.Error, expected: errors.MpesaSyncError
) -> None:
    translated = db.translate(driver_error, "postgresql://u:pw-secret@h:5432/app")
    assert type(translated) is type(expected)
    assert str(translated) == str(expected)
    assert getattr(translated, "sqlstate", None) == getattr(expected, "sqlstate", None)


def test_translated_chains_the_driver_error() -> None:
    cause = pg_errors.InsufficientPrivilege("permission denied for table bars")
    with pytest.raises(errors.DatabaseError) as caught, db.translated("dbname=app"):
        raise cause
    assert caught.value.__cause__ is cause
    assert str(caught.value) == "database error: permission denied for table bars (SQLSTATE 42501)"


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 0.0, -1.0, 1e9])
def test_the_library_refuses_a_lock_timeout_postgresql_cannot_take(seconds: float) -> None:
    with pytest.raises(errors.ConfigError, match="lock timeout"):
        db.check_lock_timeout(seconds)
    assert db.check_lock_timeout(db.MAX_LOCK_TIMEOUT) == db.MAX_LOCK_TIMEOUT
