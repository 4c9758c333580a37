"""Find every drifted bar, fix what can be fixed, report what cannot.

Detection is one set-based pass over every bar (shared with verify). The fix is
``mpesa_sync.fix_bars_v2`` (an UPDATE of the drifted bars from the rule's
view; the correction trigger recomputes each under its row lock, as for every
write to bars): each batch goes to it in its own short transaction with a
lock timeout; it retries a refused batch bar by bar, records an alert for each
bar that still refuses and returns that bar with the database's own error.
Afterwards the whole table is checked again.

Safe to run at any time: the ``zz_`` BEFORE UPDATE trigger on ``bars``
recomputes the value under the row lock with a fresh snapshot, so a value
computed here from an older snapshot never overwrites a newer credential
change; and concurrent reconciles take turns batch by batch.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import psycopg

from mpesa_sync import db
from mpesa_sync.errors import ConfigError, with_sqlstate
from mpesa_sync.queries import query
from mpesa_sync.verification import scan_drift

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1000
DEFAULT_LOCK_TIMEOUT = 5.0  # seconds, as in the install

# progress(total) gives a context whose value is advance(n), called after each batch
Progress = Callable[[int], AbstractContextManager[Callable[[int], object]]]


@dataclass(frozen=True)
class FailedBar:
    """A bar that refused its fix, with the database's own error."""

    bar_id: uuid.UUID
    error: str
    sqlstate: str
    constraint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "bar_id": str(self.bar_id),
            "error": self.error,
            "sqlstate": self.sqlstate,
            "constraint": self.constraint,
        }


@dataclass
class ReconcileReport:
    """What one reconcile found and did.

    ``drifted`` is the number found by the detection pass, ``fixed`` the number
    this run changed, ``remaining`` the drift the re-check found afterwards (for
    a dry run, the drift found).
    """

    checked: int
    drifted: int
    fixed: int = 0
    failed: list[FailedBar] = field(default_factory=list)
    remaining: int = 0
    dry_run: bool = False

    @property
    def consistent(self) -> bool:
        return self.remaining == 0

    @property
    def ok(self) -> bool:
        """True when everything is consistent and nothing failed (exit code 0)."""
        return self.consistent and not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "consistent": self.consistent,
            "dry_run": self.dry_run,
            "checked": self.checked,
            "drifted": self.drifted,
            "fixed": self.fixed,
            "failed": [bar.as_dict() for bar in self.failed],
            "remaining": self.remaining,
        }


def reconcile(
    dsn: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> ReconcileReport:
    """Fix every drifted bar in batches of ``batch_size``, then check again.

    A dry run only detects and changes nothing. Raises DatabaseUnavailable or
    SchemaNotInstalled (exit code 2) before anything is changed.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, not {batch_size}")
    db.check_lock_timeout(lock_timeout)  # before the drift pass, not after it
    with db.connection(dsn, autocommit=True) as conn:
        conn.read_only = dry_run  # applies to the transaction blocks below
        with conn.transaction():
            db.require_schema(conn)
            if not dry_run:
                db.require_sync_core_v2(conn)
            scan = scan_drift(conn, limit=None)
        drifted = sorted(scan.sample)  # batches in id order, the order the triggers lock in
        report = ReconcileReport(scan.checked, scan.drifted, dry_run=dry_run)
        logger.info(
            "checked %d bars: %d drifted",
            scan.checked,
            scan.drifted,
            extra={"action": "reconcile_detect"},
        )
        if dry_run:
            report.remaining = scan.drifted
            return report

        with progress(len(drifted)) if progress and drifted else nullcontext(_ignore) as advance:
            for batch in _batches(drifted, batch_size):
                fixed, failed = _fix_batch(conn, batch, lock_timeout)
                report.fixed += fixed
                report.failed.extend(failed)
                advance(len(batch))

        for bar in report.failed:
            logger.warning(
                "bar %s refused its status fix: %s",
                bar.bar_id,
                with_sqlstate(bar.error, bar.sqlstate),
                extra={"action": "reconcile_fix_refused"},
            )
        with conn.transaction():
            report.remaining = scan_drift(conn, limit=0).drifted
    logger.info(
        "fixed %d bars, %d refused, %d still drifted",
        report.fixed,
        len(report.failed),
        report.remaining,
        extra={"action": "reconcile_done"},
    )
    return report


def _batches(ids: Sequence[uuid.UUID], size: int) -> Iterator[list[uuid.UUID]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def _fix_batch(
    conn: psycopg.Connection[Any], batch: list[uuid.UUID], lock_timeout: float
) -> tuple[int, list[FailedBar]]:
    """Fix one batch in its own transaction: (bars changed, bars refused)."""
    with conn.transaction():
        conn.execute(query("take_reconcile_lock"))
        db.set_lock_timeout(conn, lock_timeout)
        failed = [
            FailedBar(bar_id, error, sqlstate, constraint)
            for bar_id, error, sqlstate, constraint in conn.execute(
                query("fix_bars"), {"bar_ids": batch}
            )
        ]
        fixed = db.fetch_one(conn, query("reconcile_changes_in_transaction"))["count"]
    return int(fixed), failed


def _ignore(_: int) -> None:
    return None
