"""Every error mpesa-sync raises on purpose derives from MpesaSyncError.

The CLI prints ``str(error)`` on one line and exits with ``error.exit_code``;
nothing here may carry a credential field in its message.
"""

from __future__ import annotations


class MpesaSyncError(Exception):
    """mpesa-sync failed."""

    exit_code = 2

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class ConfigError(MpesaSyncError):
    """A setting or option is missing or invalid."""


class DatabaseUnavailable(MpesaSyncError):
    """The database could not be reached."""


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
