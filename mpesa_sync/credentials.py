"""A bar's M-Pesa credentials: the settings API that saves them, and a read without secrets.

:func:`save_settings` encrypts the secrets (:mod:`mpesa_sync.crypto`) and calls
``mpesa_sync.save_settings``, which validates, upserts the credential row and
syncs ``bars.mpesa_enabled`` in one transaction: all of it happens or none.

Failures:

- invalid input raises :class:`InvalidSettings` (:class:`BarNotFound` for an
  unknown bar) at once: nothing was changed and no alert is raised;
- a serialization failure, a deadlock, a lock timeout or a lost connection is
  retried in a new transaction (see :mod:`mpesa_sync.retry`), each retry logged;
- once the attempts are spent, or on any other database error, the failure is
  logged at ERROR, recorded as a ``settings_save_failed`` alert over a fresh
  connection, and raised as :class:`SaveSettingsFailed`.

No message, log record, alert or exception carries a secret, in plaintext or
encrypted: they name fields and SQLSTATEs, and database messages pass through
a redactor first.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import tenacity
from psycopg import conninfo
from psycopg.pq import TransactionStatus

from mpesa_sync import alerts, db
from mpesa_sync.crypto import CredentialCipher
from mpesa_sync.errors import (
    BarNotFound,
    ConfigError,
    DatabaseUnavailable,
    InvalidSettings,
    MpesaSyncError,
    SaveSettingsFailed,
    SchemaNotInstalled,
    first_line,
    with_sqlstate,
)
from mpesa_sync.queries import query
from mpesa_sync.retry import RetryPolicy, is_transient, sqlstate_of

logger = logging.getLogger(__name__)

ENVIRONMENTS = ("sandbox", "production")
ALERT_KIND = "settings_save_failed"
DEFAULT_RETRY = RetryPolicy()  # 3 attempts, waiting 0.1-0.2 s, then 0.2-0.3 s


@dataclass(frozen=True)
class SaveResult:
    """What ``mpesa_sync.save_settings`` reported, and how many attempts it took."""

    success: bool
    credentials_saved: bool
    status_synced: bool
    mpesa_enabled: bool | None
    bar_id: uuid.UUID
    environment: str
    is_active: bool
    credential_id: uuid.UUID
    attempts: int

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "bar_id": str(self.bar_id),
            "credential_id": str(self.credential_id),
        }


@dataclass(frozen=True)
class CredentialState:
    """One credential row without its secrets: only whether each is present."""

    environment: str
    business_shortcode: str
    is_active: bool | None
    has_consumer_key: bool
    has_consumer_secret: bool
    has_passkey: bool
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class BarSettings:
    """A bar's M-Pesa status and its credential rows, nothing secret."""

    bar_id: uuid.UUID
    mpesa_enabled: bool | None
    expected: bool
    credentials: list[CredentialState]

    @property
    def in_sync(self) -> bool:
        return self.mpesa_enabled is not None and self.mpesa_enabled == self.expected

    def as_dict(self) -> dict[str, Any]:
        return {
            "bar_id": str(self.bar_id),
            "mpesa_enabled": self.mpesa_enabled,
            "in_sync": self.in_sync,
            "credentials": [
                {
                    **c.__dict__,
                    "created_at": c.created_at.isoformat() if c.created_at else None,
                    "updated_at": c.updated_at.isoformat() if c.updated_at else None,
                }
                for c in self.credentials
            ],
        }


def save_settings(
    conn_or_dsn: psycopg.Connection[Any] | str,
    bar_id: uuid.UUID | str,
    environment: str,
    shortcode: str,
    consumer_key: str,
    consumer_secret: str,
    passkey: str,
    active: bool,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    lock_timeout: float | None = 5.0,
    cipher: CredentialCipher | None = None,
) -> SaveResult:
    """Save one environment's credentials for a bar and sync its status, atomically.

    ``conn_or_dsn`` is a DSN (each attempt uses a new connection, so a lost
    connection is retried) or an open connection outside any transaction
    (each attempt is one transaction on it, at its isolation level; a lost
    connection cannot be given back working, so it ends the call).
    ``lock_timeout`` (seconds, None for the session's setting) bounds each
    lock wait; a timeout is retried like a serialization failure. The key
    comes from MPESA_SYNC_ENCRYPTION_KEY unless ``cipher`` is given.
    """
    if lock_timeout is not None:
        db.check_lock_timeout(lock_timeout)
    cipher = cipher or CredentialCipher.from_env()
    bar = _bar_uuid(bar_id)
    plaintexts = {
        "consumer_key": _secret("consumer_key", consumer_key),
        "consumer_secret": _secret("consumer_secret", consumer_secret),
        "passkey": _secret("passkey", passkey),
    }
    sealed = {
        f"{name}_enc": cipher.encrypt(value, field_name=f"{name}_enc", bar_id=bar)
        for name, value in plaintexts.items()
    }
    params = {
        "bar_id": bar,
        "environment": environment,
        "business_shortcode": shortcode,
        "is_active": active,
        **sealed,
    }
    redact = _Redactor([*plaintexts.values(), *sealed.values()])

    caller_conn = None if isinstance(conn_or_dsn, str) else conn_or_dsn
    if caller_conn is not None and caller_conn.info.transaction_status != TransactionStatus.IDLE:
        raise ConfigError(
            "save_settings needs a connection outside a transaction: "
            "it commits its own transaction, and retries it"
        )

    def attempt() -> dict[str, Any]:
        if caller_conn is not None:
            return _save_once(caller_conn, params, lock_timeout)
        # db.connect rather than db.connection: the driver's errors must reach
        # the handling below as they are (db.connection would chain them).
        with db.connect(conn_or_dsn, autocommit=True) as conn:  # type: ignore[arg-type]
            return _save_once(conn, params, lock_timeout)

    def retry_if(exc: BaseException) -> bool:
        if caller_conn is not None and (caller_conn.closed or caller_conn.broken):
            return False
        return is_transient(exc)

    def on_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.warning(
            "saving settings for bar %s failed (SQLSTATE %s, attempt %d of %d): %s; "
            "retrying in %.2f s",
            bar,
            sqlstate_of(exc) if exc else None,
            state.attempt_number,
            retry.attempts,
            redact(first_line(exc)) if exc else "",
            state.upcoming_sleep,
            extra={"action": "save_settings_retry"},
        )

    retrying = retry.retrying(retry_if=retry_if, on_retry=on_retry)
    failure: MpesaSyncError | None = None
    try:
        payload = retrying(attempt)
    except (psycopg.Error, DatabaseUnavailable) as exc:
        failure = _refused(exc, bar, redact) or _failed(
            exc, retrying, bar, environment, redact, conn_or_dsn
        )
    if failure is not None:
        # The one place in the package that does not chain the driver's error:
        # it can quote the failing row (a CHECK's DETAIL, a host trigger's
        # message) with the ciphertexts in it, and a __cause__ or __context__
        # travels into every traceback and error reporter. So the error is
        # raised here, outside the except block, with neither; its message is
        # a redacted first line. tests/test_settings_api.py checks both.
        raise failure

    result = SaveResult(
        success=bool(payload["success"]),
        credentials_saved=bool(payload["credentials_saved"]),
        status_synced=bool(payload["status_synced"]),
        mpesa_enabled=payload["mpesa_enabled"],
        bar_id=uuid.UUID(payload["bar_id"]),
        environment=payload["environment"],
        is_active=bool(payload["is_active"]),
        credential_id=uuid.UUID(payload["credential_id"]),
        attempts=retrying.statistics.get("attempt_number", 1),
    )
    logger.info(
        "saved %s settings for bar %s (active=%s): mpesa_enabled=%s, %d attempt(s)",
        result.environment,
        bar,
        result.is_active,
        result.mpesa_enabled,
        result.attempts,
        extra={"action": "save_settings"},
    )
    return result


def read_settings(conn: psycopg.Connection[Any], bar_id: uuid.UUID | str) -> BarSettings:
    """A bar's status and credential rows, without any secret."""
    bar = _bar_uuid(bar_id)
    rows = conn.execute(query("bar_settings"), {"bar_id": bar}).fetchall()
    if not rows:
        raise BarNotFound(f"unknown bar_id: no bar {bar}", field="bar_id")
    _, enabled, expected = rows[0][:3]
    credentials = [CredentialState(*row[3:]) for row in rows if row[3] is not None]
    return BarSettings(bar, enabled, bool(expected), credentials)


def _save_once(
    conn: psycopg.Connection[Any], params: dict[str, Any], lock_timeout: float | None
) -> dict[str, Any]:
    with conn.transaction():
        if lock_timeout is not None:
            db.set_lock_timeout(conn, lock_timeout)
        row = conn.execute(query("save_settings"), params).fetchone()
    assert row is not None
    return dict(row[0])


def _refused(
    exc: BaseException, bar: uuid.UUID, redact: _Redactor
) -> InvalidSettings | SchemaNotInstalled | None:
    """The error for a refusal that is the caller's to fix (no alert), else None."""
    if isinstance(exc, psycopg.errors.InvalidParameterValue) and exc.diag.column_name:
        message = redact(exc.diag.message_primary or "")
        return InvalidSettings(message, field=exc.diag.column_name)
    if isinstance(exc, psycopg.errors.ForeignKeyViolation):
        return BarNotFound(f"unknown bar_id: no bar {bar}", field="bar_id")
    if isinstance(exc, psycopg.errors.UndefinedFunction | psycopg.errors.InvalidSchemaName):
        return SchemaNotInstalled(
            "mpesa_sync.save_settings is not installed; run `mpesa-sync migrate` first"
        )
    return None


def _failed(
    exc: BaseException,
    retrying: tenacity.Retrying,
    bar: uuid.UUID,
    environment: str,
    redact: _Redactor,
    conn_or_dsn: psycopg.Connection[Any] | str,
) -> SaveSettingsFailed:
    """Log, alert over a fresh connection, and build the one exception the caller sees."""
    attempts = retrying.statistics.get("attempt_number", 1)
    sqlstate = sqlstate_of(exc)
    reason = redact(first_line(exc))
    detail: dict[str, Any] = {"sqlstate": sqlstate, "attempts": attempts, "error": reason}
    if environment in ENVIRONMENTS:  # anything else is unvalidated text: keep it out
        detail["environment"] = environment
    alert_id = alerts.raise_alert(_alert_dsn(conn_or_dsn), ALERT_KIND, bar, detail)
    logger.error(
        "could not save settings for bar %s: SQLSTATE %s after %d attempt(s): %s; alert %s",
        bar,
        sqlstate,
        attempts,
        reason,
        alert_id if alert_id is not None else "not recorded",
        extra={"action": "save_settings_failed"},
    )
    alert = f"alert {alert_id} raised" if alert_id is not None else "no alert could be recorded"
    reason = with_sqlstate(reason, sqlstate)
    return SaveSettingsFailed(
        f"could not save settings for bar {bar} after {attempts} attempt(s): "
        f"{reason}; nothing was changed; {alert}",
        bar_id=str(bar),
        sqlstate=sqlstate,
        attempts=attempts,
        alert_id=alert_id,
    )


def _alert_dsn(conn_or_dsn: psycopg.Connection[Any] | str) -> str:
    """Where to open the fresh connection for the alert: the caller's DSN or connection."""
    if isinstance(conn_or_dsn, str):
        return conn_or_dsn
    info = conn_or_dsn.info
    return conninfo.make_conninfo(**info.get_parameters(), password=info.password)


def _bar_uuid(bar_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(bar_id, uuid.UUID):
        return bar_id
    try:
        return uuid.UUID(str(bar_id))
    except ValueError:
        pass
    # Raised outside the except block, as every error of the settings API: no
    # cause and no context rides along (see save_settings).
    raise InvalidSettings("invalid bar_id: not a UUID", field="bar_id")


def _secret(name: str, value: str | None) -> str:
    """A secret with surrounding whitespace (a paste's newline) removed; never empty."""
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise InvalidSettings(f"invalid {name}: required and must not be empty", field=name)
    return text


class _Redactor:
    """Replaces every form of the call's values that could leak into a message."""

    _MIN_LENGTH = 4  # shorter values would mangle ordinary words

    def __init__(self, values: list[str | bytes]) -> None:
        forms: set[str] = set()
        for value in values:
            if isinstance(value, bytes):
                forms.update({value.hex(), "\\x" + value.hex()})
            elif value:
                forms.add(value)
        self._forms = sorted(
            (f for f in forms if len(f) >= self._MIN_LENGTH), key=len, reverse=True
        )

    def __call__(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, "[redacted]")
        return text
