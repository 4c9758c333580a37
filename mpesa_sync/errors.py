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
