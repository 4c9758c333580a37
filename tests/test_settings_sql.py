"""mpesa_sync.save_settings, called as SQL the way the staff app's RPC calls it."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import errors

from mpesa_sync import migrations
from mpesa_sync.resources import resource_dir
from tests.support.database import Database

# The install, upgrade, rollback, settings, relay and prune tests run as the
# managed-host owner (no superuser) and as a superuser.
pytestmark = pytest.mark.roles("owner", "superuser")

SAVE = "SELECT mpesa_sync.save_settings(%s, %s, %s, %s, %s, %s, %s)"
WRAPPER_SQL = resource_dir("sql") / "optional" / "public_save_settings.sql"

KEY = b"enc-KEY-7f3a9c"
SECRET = b"enc-SECRET-51be02"
PASSKEY = b"enc-PASSKEY-0d44e1"


def save(
    db: Database,
    bar: Any,
    environment: Any = "sandbox",
    shortcode: Any = "174379",
    key: Any = KEY,
    secret: Any = SECRET,
    passkey: Any = PASSKEY,
    active: Any = True,
    *,
    role: str | None = None,
) -> dict[str, Any]:
    with db.connect() as conn:
        if role:
            conn.execute(f"SET ROLE {role}")
        return conn.execute(
            SAVE, (bar, environment, shortcode, key, secret, passkey, active)
        ).fetchone()[0]


def state(db: Database, bar: uuid.UUID) -> dict[str, Any]:
    """Everything a save could touch, down to the write tokens and the alerts."""
    return {
        **db.saved_state(bar),
        "alerts": db.query("SELECT * FROM mpesa_sync.alerts ORDER BY id"),
        "tokens": db.query("SELECT * FROM mpesa_sync.bar_write_tokens ORDER BY bar_id"),
    }


def test_activating_inserts_the_row_and_enables_the_bar(db: Database) -> None:
    bar = db.add_bar()
    result = save(db, bar, active=True)
    assert result["success"] is True
    assert result["credentials_saved"] is True
    assert result["status_synced"] is True
    assert result["mpesa_enabled"] is True
    assert result["bar_id"] == str(bar)
    row = db.query("SELECT * FROM mpesa_credentials WHERE tenant_id = %s", (bar,))
    assert len(row) == 1
    assert str(row[0]["id"]) == result["credential_id"]
    assert (row[0]["environment"], row[0]["business_shortcode"], row[0]["is_active"]) == (
        "sandbox",
        "174379",
        True,
    )
    assert bytes(row[0]["consumer_key_enc"]) == KEY
    assert db.enabled(bar) is True
    assert [(e["mpesa_enabled"], e["source"]) for e in db.events()] == [(True, "credentials")]


def test_deactivating_updates_the_same_row_and_disables_the_bar(db: Database) -> None:
    bar = db.add_bar()
    first = save(db, bar, active=True)
    result = save(db, bar, shortcode="600126", key=b"new-key", active=False)
    assert result["success"] is True and result["mpesa_enabled"] is False
    assert result["credential_id"] == first["credential_id"]  # upsert, not a second row
    rows = db.query("SELECT * FROM mpesa_credentials WHERE tenant_id = %s", (bar,))
    assert [
        (r["business_shortcode"], bytes(r["consumer_key_enc"]), r["is_active"]) for r in rows
    ] == [("600126", b"new-key", False)]
    assert db.enabled(bar) is False
    assert [e["mpesa_enabled"] for e in db.events()] == [True, False]


def test_deactivating_one_environment_keeps_the_bar_on_through_the_other(db: Database) -> None:
    bar = db.add_bar()
    save(db, bar, "production", active=True)
    save(db, bar, "sandbox", active=True)
    result = save(db, bar, "sandbox", active=False)
    assert result["mpesa_enabled"] is True
    assert db.enabled(bar) is True


def test_a_save_also_fixes_a_bar_that_had_drifted_before(db: Database) -> None:
    bar = db.add_bar()
    save(db, bar, active=False)
    db.force_enabled(bar, True)  # drift behind the triggers' back
    result = save(db, bar, shortcode="600126", active=False)  # is_active unchanged
    assert result["mpesa_enabled"] is False and result["status_synced"] is True
    assert db.drift() == []
    assert db.events()[-1]["source"] == "credentials"


INVALID = [
    pytest.param({"environment": "staging"}, "22023", "environment", id="environment-unknown"),
    pytest.param({"environment": None}, "22023", "environment", id="environment-null"),
    pytest.param({"shortcode": "1234"}, "22023", "business_shortcode", id="shortcode-short"),
    pytest.param({"shortcode": "12345678"}, "22023", "business_shortcode", id="shortcode-long"),
    pytest.param({"shortcode": "12a45"}, "22023", "business_shortcode", id="shortcode-letters"),
    pytest.param({"shortcode": "174379\n"}, "22023", "business_shortcode", id="shortcode-newline"),
    pytest.param({"shortcode": None}, "22023", "business_shortcode", id="shortcode-null"),
    pytest.param({"key": b""}, "22023", "consumer_key_enc", id="key-empty"),
    pytest.param({"key": None}, "22023", "consumer_key_enc", id="key-null"),
    pytest.param({"secret": b""}, "22023", "consumer_secret_enc", id="secret-empty"),
    pytest.param({"passkey": None}, "22023", "passkey_enc", id="passkey-null"),
    pytest.param({"active": None}, "22023", "is_active", id="active-null"),
    pytest.param({"bar": None}, "22023", "bar_id", id="bar-null"),
    pytest.param({"bar": uuid.UUID(int=7)}, "23503", "bar_id", id="bar-unknown"),
]


@pytest.mark.parametrize(("change", "sqlstate", "field"), INVALID)
def test_invalid_input_is_refused_and_changes_nothing(
    db: Database, change: dict[str, Any], sqlstate: str, field: str
) -> None:
    bar = db.add_bar()
    save(db, bar, "production", shortcode="600000", active=True)
    before = state(db, bar)
    args = {"bar": bar, **change}
    # A secret pasted into the wrong field must not come back in the message.
    if "shortcode" in change and change["shortcode"] is None:
        args["key"] = b"pasted-secret-value"
    with pytest.raises(psycopg.Error) as caught:
        save(db, **args)
    exc = caught.value
    assert exc.sqlstate == sqlstate
    assert field in (exc.diag.message_primary or "")
    assert exc.diag.column_name == field
    for value in (KEY, SECRET, PASSKEY, b"pasted-secret-value"):
        assert value.decode() not in str(exc)
        assert value.hex() not in str(exc)
    assert state(db, bar) == before


def test_only_service_role_may_call_it(db: Database) -> None:
    bar = db.add_bar()
    assert save(db, bar, role="service_role")["mpesa_enabled"] is True
    for role in ("anon", "authenticated"):
        with pytest.raises(errors.InsufficientPrivilege):
            save(db, bar, active=False, role=role)
    assert (
        db.scalar(
            "SELECT has_function_privilege('public', "
            "'mpesa_sync.save_settings(uuid, text, text, bytea, bytea, bytea, boolean)', 'EXECUTE')"
        )
        is False
    )
    assert db.enabled(bar) is True


def test_optional_public_wrapper_is_for_service_role_only(db: Database) -> None:
    # What Supabase does to every new function in public, so the file must undo it.
    db.execute(
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        "GRANT EXECUTE ON FUNCTIONS TO anon, authenticated"
    )
    with db.connect() as conn:
        conn.execute(WRAPPER_SQL.read_text())
        conn.execute(WRAPPER_SQL.read_text())  # applying it again is harmless
    bar = db.add_bar()
    call = "SELECT public.mpesa_save_settings(%s, 'sandbox', '174379', %s, %s, %s, true)"
    with db.connect() as conn:
        conn.execute("SET ROLE service_role")
        result = conn.execute(call, (bar, KEY, SECRET, PASSKEY)).fetchone()[0]
    assert result["success"] is True and db.enabled(bar) is True
    for role in ("anon", "authenticated"):
        with db.connect() as conn, pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"SET ROLE {role}")
            conn.execute(call, (bar, KEY, SECRET, PASSKEY))


def test_rollback_removes_the_function_and_the_optional_wrapper(db: Database) -> None:
    with db.connect() as conn:
        conn.execute(WRAPPER_SQL.read_text())
    migrations.rollback(db.dsn, count=None)
    assert db.scalar("SELECT to_regproc('public.mpesa_save_settings')") is None
    assert db.scalar("SELECT to_regnamespace('mpesa_sync')") is None
