"""mpesa_sync.save_settings, the Python API: encryption, validation, retries, alerts.

The faults are real: a lock another connection holds, a backend killed with
pg_terminate_backend, a REPEATABLE READ serialization failure, a host CHECK
constraint. Every failure is searched for the secrets, plaintext and
encrypted, in logs, exceptions, alerts and notifications.
"""

from __future__ import annotations

import base64
import json
import logging
import traceback
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import IsolationLevel

import mpesa_sync
from mpesa_sync.crypto import KEY_ENV, CredentialCipher
from mpesa_sync.errors import (
    BarNotFound,
    ConfigError,
    InvalidSettings,
    SaveSettingsFailed,
    SchemaNotInstalled,
)
from mpesa_sync.retry import RetryPolicy
from tests.support.database import Database
from tests.support.waiting import wait_for

# The install, upgrade, rollback, settings, relay and prune tests run as the
# managed-host owner (no superuser) and as a superuser.
pytestmark = pytest.mark.roles("owner", "superuser")

T = TypeVar("T")

FAST = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.05)
PLAIN = {
    "consumer_key": "ck-" + uuid.uuid4().hex,
    "consumer_secret": "cs-" + uuid.uuid4().hex,
    "passkey": "pk-" + uuid.uuid4().hex,
}
WAITING_ON_LOCK = """
    SELECT pid FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid = ANY (%s)
"""
OUR_BACKENDS = """
    SELECT array_agg(pid) FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = 'mpesa-sync'
"""


@pytest.fixture
def cipher(monkeypatch: pytest.MonkeyPatch) -> CredentialCipher:
    monkeypatch.setenv(KEY_ENV, base64.b64encode(bytes(range(32))).decode())
    return CredentialCipher.from_env()


@pytest.fixture
def sealed(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every ciphertext the code under test produces, to search for it later."""
    made: list[bytes] = []
    encrypt = CredentialCipher.encrypt

    def spy(self: CredentialCipher, plaintext: str, **kwargs: Any) -> bytes:
        made.append(encrypt(self, plaintext, **kwargs))
        return made[-1]

    monkeypatch.setattr(CredentialCipher, "encrypt", spy)
    return made


@pytest.fixture
def listener(db: Database) -> Iterator[psycopg.Connection[Any]]:
    with db.connect() as conn:
        conn.execute("LISTEN mpesa_alerts")
        conn.execute("LISTEN mpesa_status")
        yield conn


def save(
    target: Any,
    bar: Any,
    *,
    environment: str = "sandbox",
    shortcode: str = "174379",
    active: bool = True,
    **kwargs: Any,
) -> mpesa_sync.credentials.SaveResult:
    secrets = {**PLAIN, **{k: kwargs.pop(k) for k in list(kwargs) if k in PLAIN}}
    return mpesa_sync.save_settings(
        target, bar, environment, shortcode, active=active, **secrets, **kwargs
    )


def alerts(db: Database) -> list[dict[str, Any]]:
    return db.query("SELECT * FROM mpesa_sync.alerts ORDER BY id")


def assert_no_secret(text: str, ciphertexts: list[bytes]) -> None:
    forms = list(PLAIN.values())
    for blob in ciphertexts:
        forms += [blob.hex(), base64.b64encode(blob).decode(), repr(blob)[2:-1]]
    for form in forms:
        assert form not in text


def assert_unchained(exc: BaseException, ciphertexts: list[bytes]) -> None:
    """The settings API's guarantee: no driver error rides along (it could quote
    the failing row, ciphertexts and all), so nothing a traceback or an error
    reporter prints from this exception can carry a secret."""
    assert exc.__cause__ is None and exc.__context__ is None
    assert_no_secret("".join(traceback.format_exception(exc)), ciphertexts)


def holding_bar(db: Database, bar: uuid.UUID) -> psycopg.Connection[Any]:
    """Another connection that holds the bar's row lock until it ends its transaction."""
    holder = db.connect(autocommit=False)
    holder.execute("SELECT 1 FROM bars WHERE id = %s FOR UPDATE", (bar,))
    return holder


# -- success -----------------------------------------------------------------


def test_activating_encrypts_saves_and_enables(
    db: Database, cipher: CredentialCipher, listener: psycopg.Connection[Any], sealed: list[bytes]
) -> None:
    bar = db.add_bar()
    result = save(db.dsn, str(bar), active=True)
    assert (result.success, result.credentials_saved, result.status_synced) == (True, True, True)
    assert (result.mpesa_enabled, result.bar_id, result.attempts) == (True, bar, 1)
    [row] = db.query("SELECT * FROM mpesa_credentials WHERE tenant_id = %s", (bar,))
    assert row["id"] == result.credential_id
    for name, plain in PLAIN.items():
        stored = bytes(row[f"{name}_enc"])
        assert plain.encode() not in stored
        assert cipher.decrypt(stored, field_name=f"{name}_enc", bar_id=bar) == plain
    assert db.enabled(bar) is True
    payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    assert json.loads(payloads[0])["mpesa_enabled"] is True
    assert_no_secret(" ".join(payloads), sealed)


def test_deactivating_on_a_callers_connection(db: Database, cipher: CredentialCipher) -> None:
    bar = db.add_bar()
    with db.connect(autocommit=False) as conn:
        save(conn, bar, active=True)
        result = save(conn, bar, shortcode="600126", active=False)
        # The call committed its own transaction and left the connection idle.
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert (result.mpesa_enabled, result.is_active, result.success) == (False, False, True)
    rows = db.query("SELECT business_shortcode, is_active FROM mpesa_credentials")
    assert rows == [{"business_shortcode": "600126", "is_active": False}]
    assert db.enabled(bar) is False
    assert [e["mpesa_enabled"] for e in db.events()] == [True, False]


def test_surrounding_whitespace_of_a_pasted_secret_is_dropped(
    db: Database, cipher: CredentialCipher
) -> None:
    bar = db.add_bar()
    save(db.dsn, bar, consumer_key=f"  {PLAIN['consumer_key']}\n")
    stored = db.scalar("SELECT consumer_key_enc FROM mpesa_credentials")
    assert (
        cipher.decrypt(bytes(stored), field_name="consumer_key_enc", bar_id=bar)
        == PLAIN["consumer_key"]
    )


# -- refused input: one clear exception, nothing changed, no alert -------------


@pytest.mark.parametrize(
    "value",
    [None, "", "not base64!", base64.b64encode(b"short").decode()],
    ids=["unset", "empty", "not-base64", "16-bytes"],
)
def test_refuses_to_run_without_a_valid_key(
    db: Database, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    bar = db.add_bar()
    before = db.saved_state(bar)
    with pytest.raises(ConfigError, match=KEY_ENV):
        save(db.dsn, bar)
    assert db.saved_state(bar) == before


INVALID = [
    pytest.param({"consumer_key": ""}, "consumer_key", id="key-empty"),
    pytest.param({"consumer_secret": " \n"}, "consumer_secret", id="secret-blank"),
    pytest.param({"passkey": None}, "passkey", id="passkey-none"),
    pytest.param({"environment": "staging"}, "environment", id="environment"),
    pytest.param({"shortcode": "1234"}, "business_shortcode", id="shortcode-short"),
    pytest.param(
        {"shortcode": PLAIN["passkey"]}, "business_shortcode", id="shortcode-pasted-secret"
    ),
    pytest.param({"bar": "not-a-uuid"}, "bar_id", id="bar-not-uuid"),
    pytest.param({"bar": uuid.UUID(int=1)}, "bar_id", id="bar-unknown"),
]


@pytest.mark.parametrize(("change", "field"), INVALID)
def test_invalid_input_changes_nothing_and_raises_no_alert(
    db: Database,
    cipher: CredentialCipher,
    sealed: list[bytes],
    change: dict[str, Any],
    field: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bar = db.add_bar()
    save(db.dsn, bar, environment="production", shortcode="600000", active=True)
    before = db.saved_state(bar)
    args = {"bar": bar, **change}
    with pytest.raises(InvalidSettings) as caught:
        save(db.dsn, args.pop("bar"), **args)
    assert caught.value.field == field
    assert field in str(caught.value)
    if change.get("bar") == uuid.UUID(int=1):
        assert isinstance(caught.value, BarNotFound)
    assert db.saved_state(bar) == before
    assert alerts(db) == []
    assert_no_secret(str(caught.value) + caplog.text, sealed)
    assert_unchained(caught.value, sealed)


def test_a_database_without_the_schema_is_named(
    host_db: Database, cipher: CredentialCipher
) -> None:
    bar = host_db.add_bar()
    with pytest.raises(SchemaNotInstalled, match="migrate"):
        save(host_db.dsn, bar, retry=FAST)


def test_a_connection_inside_a_transaction_is_refused(
    db: Database, cipher: CredentialCipher
) -> None:
    bar = db.add_bar()
    with db.connect(autocommit=False) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(ConfigError, match="outside a transaction"):
            save(conn, bar)
    assert db.query("SELECT * FROM mpesa_credentials") == []


# -- faults ----------------------------------------------------------------------


def test_lock_timeout_is_retried_then_alerted(
    db: Database,
    cipher: CredentialCipher,
    sealed: list[bytes],
    listener: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mpesa_sync")
    bar = db.add_bar()
    save(db.dsn, bar, active=False)
    before = db.saved_state(bar)
    with holding_bar(db, bar), pytest.raises(SaveSettingsFailed) as caught:
        save(db.dsn, bar, active=True, lock_timeout=0.1, retry=FAST)
    exc = caught.value
    assert (exc.sqlstate, exc.attempts, exc.bar_id) == ("55P03", 3, str(bar))
    assert "lock timeout" in str(exc) and "nothing was changed" in str(exc)
    assert db.saved_state(bar) == before

    retries = [r for r in caplog.records if getattr(r, "action", None) == "save_settings_retry"]
    assert [(r.levelno, "55P03" in r.getMessage()) for r in retries] == [
        (logging.WARNING, True)
    ] * 2
    [error] = [r for r in caplog.records if getattr(r, "action", None) == "save_settings_failed"]
    assert error.levelno == logging.ERROR
    assert str(bar) in error.getMessage() and "3 attempt(s)" in error.getMessage()

    [alert] = alerts(db)
    assert alert["id"] == exc.alert_id
    assert (alert["kind"], alert["bar_id"]) == ("settings_save_failed", bar)
    assert alert["detail"]["sqlstate"] == "55P03" and alert["detail"]["attempts"] == 3
    notes = [n for n in listener.notifies(timeout=2, stop_after=1)]
    assert [(n.channel, json.loads(n.payload)["id"]) for n in notes] == [
        ("mpesa_alerts", exc.alert_id)
    ]

    assert len(sealed) == 3 * 2  # the successful save, then the failed one (one encryption)
    everything = " ".join(
        [
            caplog.text,
            str(exc),
            repr(exc),
            json.dumps(alert, default=str),
            *(n.payload for n in notes),
        ]
    )
    assert_no_secret(everything, sealed)
    assert_unchained(exc, sealed)


def test_terminated_backend_leaves_nothing_and_is_retried_on_a_new_connection(
    db: Database, cipher: CredentialCipher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mpesa_sync")
    bar = db.add_bar()
    before = db.saved_state(bar)
    holder = holding_bar(db, bar)
    with holder, ThreadPoolExecutor(1) as pool:
        future = pool.submit(save, db.dsn, bar, active=True, lock_timeout=None, retry=FAST)
        first = wait_for(
            "the save to wait on the lock",
            lambda: db.scalar(WAITING_ON_LOCK, (db.scalar(OUR_BACKENDS) or [],)),
        )
        assert db.scalar("SELECT pg_terminate_backend(%s)", (first,)) is True
        second = wait_for(
            "the retry to wait on the lock",
            lambda: db.scalar(
                WAITING_ON_LOCK, ([p for p in db.scalar(OUR_BACKENDS) or [] if p != first],)
            ),
        )
        assert second != first
        assert db.saved_state(bar) == before  # the killed attempt left nothing
        holder.rollback()
        result = future.result(timeout=30)
    assert (result.success, result.mpesa_enabled, result.attempts) == (True, True, 2)
    assert len(db.query("SELECT * FROM mpesa_credentials WHERE tenant_id = %s", (bar,))) == 1
    assert [e["mpesa_enabled"] for e in db.events()] == [True]
    retries = [r for r in caplog.records if getattr(r, "action", None) == "save_settings_retry"]
    assert len(retries) == 1 and "57P01" in retries[0].getMessage()
    assert alerts(db) == []


def test_terminated_callers_connection_is_not_retried_but_alerted(
    db: Database, cipher: CredentialCipher, sealed: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    bar = db.add_bar()
    before = db.saved_state(bar)
    caller = db.connect()
    with holding_bar(db, bar) as holder, caller, ThreadPoolExecutor(1) as pool:
        pid = caller.info.backend_pid
        future = pool.submit(save, caller, bar, lock_timeout=None, retry=FAST)
        wait_for("the save to wait on the lock", lambda: db.scalar(WAITING_ON_LOCK, ([pid],)))
        db.scalar("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(SaveSettingsFailed) as caught:
            future.result(timeout=30)
        holder.rollback()
        assert caller.broken
    assert (caught.value.attempts, caught.value.sqlstate) == (1, "57P01")
    assert db.saved_state(bar) == before
    [alert] = alerts(db)  # written over a fresh connection to the same database
    assert alert["id"] == caught.value.alert_id and alert["detail"]["sqlstate"] == "57P01"
    assert_no_secret(caplog.text + str(caught.value) + json.dumps(alert, default=str), sealed)


def test_repeatable_read_serialization_failure_is_retried_and_succeeds(
    db: Database, cipher: CredentialCipher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mpesa_sync")
    bar = db.add_bar()
    save(db.dsn, bar, shortcode="111111", active=True)
    caller = db.connect()
    caller.isolation_level = IsolationLevel.REPEATABLE_READ
    writer = db.connect(autocommit=False)
    with caller, writer, ThreadPoolExecutor(1) as pool:
        # Another staff write to the same row, still open while our save starts.
        writer.execute(
            "UPDATE mpesa_credentials SET business_shortcode = '222222' WHERE tenant_id = %s",
            (bar,),
        )
        future = pool.submit(
            save, caller, bar, shortcode="333333", active=False, lock_timeout=None, retry=FAST
        )
        pid = caller.info.backend_pid
        wait_for("the save to wait on the row", lambda: db.scalar(WAITING_ON_LOCK, ([pid],)))
        writer.commit()  # the save's snapshot is now stale: 40001, then a retry
        result = future.result(timeout=30)
    assert (result.attempts, result.mpesa_enabled, result.success) == (2, False, True)
    assert db.query("SELECT business_shortcode, is_active FROM mpesa_credentials") == [
        {"business_shortcode": "333333", "is_active": False}
    ]
    assert db.drift() == []
    retries = [r for r in caplog.records if getattr(r, "action", None) == "save_settings_retry"]
    assert len(retries) == 1 and "40001" in retries[0].getMessage()


def test_a_refusal_that_is_not_transient_is_alerted_at_once_without_its_detail(
    db: Database, cipher: CredentialCipher, sealed: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    # A host CHECK: its error DETAIL quotes the failing row, ciphertexts included.
    db.execute(
        "ALTER TABLE mpesa_credentials ADD CONSTRAINT host_no_999999 "
        "CHECK (business_shortcode <> '999999')"
    )
    bar = db.add_bar()
    before = db.saved_state(bar)
    with pytest.raises(SaveSettingsFailed) as caught:
        save(db.dsn, bar, shortcode="999999", retry=FAST)
    assert (caught.value.sqlstate, caught.value.attempts) == ("23514", 1)
    assert "host_no_999999" in str(caught.value)
    assert db.saved_state(bar) == before
    [alert] = alerts(db)
    assert alert["detail"]["sqlstate"] == "23514"
    assert_no_secret(caplog.text + str(caught.value) + json.dumps(alert, default=str), sealed)
    assert_unchained(caught.value, sealed)


def test_an_unreachable_database_is_retried_then_reported(
    cipher: CredentialCipher, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(SaveSettingsFailed) as caught:
        save(
            "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2", uuid.uuid4(), retry=FAST
        )
    assert caught.value.attempts == 3 and caught.value.alert_id is None
    assert "no alert could be recorded" in str(caught.value)
