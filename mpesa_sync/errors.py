"""Every error mpesa-sync raises derives from :class:`MpesaSyncError`.

A class's docstring is its default message. Messages are one line and never
carry a credential field. Driver errors become these classes in one place,
:mod:`mpesa_sync.db`, with the driver's error chained as ``__cause__`` (the
settings API is the one exception, for its secrets: see
:mod:`mpesa_sync.credentials`). Exit codes are the command line's business
(:mod:`mpesa_sync.cli`), not these classes'.

This module imports nothing heavy: the CLI's error boundary loads it on every run.
"""

from __future__ import annotations


class MpesaSyncError(Exception):
    """mpesa-sync failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class ConfigError(MpesaSyncError):
    """A setting or option is missing or invalid."""


class SessionRequired(ConfigError):
    """This command needs a session of its own, and the DSN leads to a transaction pooler."""


class DatabaseUnavailable(MpesaSyncError):
    """The database could not be reached."""


class DatabaseError(MpesaSyncError):
    """The database refused a statement.

    ``sqlstate`` is the server's code (None when it sent none); the driver's
    own error, one class per SQLSTATE (``psycopg.errors``), is ``__cause__``.
    """

    def __init__(self, message: str | None = None, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class SchemaNotInstalled(MpesaSyncError):
    """The mpesa_sync schema is not installed; run `mpesa-sync migrate` first."""


class HostSchemaMissing(MpesaSyncError):
    """The database lacks the host tables mpesa-sync works on."""


class MigrationError(MpesaSyncError):
    """A migration failed; nothing was applied."""


class InvalidSettings(MpesaSyncError):
    """The settings are invalid; nothing was changed."""

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BarNotFound(InvalidSettings):
    """No such bar; nothing was changed."""


class SaveSettingsFailed(MpesaSyncError):
    """The settings could not be saved; nothing was changed and an alert was raised."""

    def __init__(
        self,
        message: str,
        *,
        bar_id: str,
        sqlstate: str | None,
        attempts: int,
        alert_id: int | None,
    ) -> None:
        super().__init__(message)
        self.bar_id = bar_id
        self.sqlstate = sqlstate
        self.attempts = attempts
        self.alert_id = alert_id


class AlertNotFound(MpesaSyncError):
    """No such alert."""


class DecryptionFailed(MpesaSyncError):
    """A stored credential could not be decrypted with this key."""


class DarajaUnavailable(MpesaSyncError):
    """The Daraja API could not be reached."""


class HttpError(MpesaSyncError):
    """The relay answers an HTTP request with an error (JSON ``{"error": detail}``)."""

    def __init__(
        self, status_code: int, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = headers or {}


class RealtimeUnavailable(MpesaSyncError):
    """The database has no Supabase Realtime (realtime.send); nothing was changed."""


class RealtimeRightMissing(MpesaSyncError):
    """The role lacks a right the broadcast sink needs; nothing was changed."""


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (a driver's DETAIL and HINT stay behind)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def with_sqlstate(text: str, sqlstate: str | None) -> str:
    """``text (SQLSTATE 23514)``, or ``text`` when there is no SQLSTATE."""
    return f"{text} (SQLSTATE {sqlstate})" if sqlstate else text
