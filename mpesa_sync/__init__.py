"""mpesa-sync keeps ``bars.mpesa_enabled`` in step with ``mpesa_credentials``.

The work happens in PostgreSQL triggers installed by :func:`migrate`; this
package installs them, checks and repairs drift, saves a bar's M-Pesa
settings in one atomic call, and relays status events.

The names below are the public API, the one the README lists. Each loads
its module on first use, so that ``import mpesa_sync`` (and with it every
``mpesa-sync`` command) starts without the database driver or yoyo.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mpesa_sync.errors import (
    BarNotFound,
    ConfigError,
    DatabaseError,
    DatabaseUnavailable,
    HostSchemaMissing,
    InvalidSettings,
    MigrationError,
    MpesaSyncError,
    SaveSettingsFailed,
    SchemaNotInstalled,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mpesa_sync.credentials import SaveResult, save_settings
    from mpesa_sync.migrations import MigrateReport, migrate, rollback
    from mpesa_sync.reconciliation import FailedBar, ReconcileReport, reconcile
    from mpesa_sync.retry import RetryPolicy
    from mpesa_sync.verification import DriftedBar, VerifyReport, verify

_LAZY = {
    "migrate": "mpesa_sync.migrations",
    "rollback": "mpesa_sync.migrations",
    "MigrateReport": "mpesa_sync.migrations",
    "verify": "mpesa_sync.verification",
    "VerifyReport": "mpesa_sync.verification",
    "DriftedBar": "mpesa_sync.verification",
    "reconcile": "mpesa_sync.reconciliation",
    "ReconcileReport": "mpesa_sync.reconciliation",
    "FailedBar": "mpesa_sync.reconciliation",
    "save_settings": "mpesa_sync.credentials",
    "SaveResult": "mpesa_sync.credentials",
    "RetryPolicy": "mpesa_sync.retry",
}

__all__ = [
    "BarNotFound",
    "ConfigError",
    "DatabaseError",
    "DatabaseUnavailable",
    "DriftedBar",
    "FailedBar",
    "HostSchemaMissing",
    "InvalidSettings",
    "MigrateReport",
    "MigrationError",
    "MpesaSyncError",
    "ReconcileReport",
    "RetryPolicy",
    "SaveResult",
    "SaveSettingsFailed",
    "SchemaNotInstalled",
    "VerifyReport",
    "__version__",
    "migrate",
    "reconcile",
    "rollback",
    "save_settings",
    "verify",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mpesa_sync' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
