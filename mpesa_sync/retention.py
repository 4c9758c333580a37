"""Retention: prune old status events and acknowledged alerts.

The work is ``mpesa_sync.prune_v1``, which prunes one bounded batch per call
(see its comment in sql/schema.sql for why it is not one long call). This
module is the loop around it: one call per transaction, until a call finds
nothing more to prune, so that a year of backlog never holds a lock or piles
up dead rows in one transaction, and writers and relays carry on beside it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from mpesa_sync import db
from mpesa_sync.errors import ConfigError
from mpesa_sync.queries import query

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 10_000  # events (and alerts) per transaction
MAX_BATCH_SIZE = 1_000_000
MAX_AGE = timedelta(days=36_500)  # a century: beyond it the horizon is not a date

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_DURATION = re.compile(r"([0-9]{1,9})([smhd])")


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or ``45s`` as a timedelta; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError("expected a number and a unit, s, m, h or d (for example 30d)")
    age = timedelta(**{_UNITS[match[2]]: int(match[1])})
    check_age(age)
    return age


def format_duration(age: timedelta) -> str:
    """The inverse of parse_duration: the largest whole unit, ``30d`` or ``90m``."""
    seconds = int(age.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def check_age(age: timedelta) -> None:
    if not timedelta(0) < age <= MAX_AGE:
        raise ValueError(f"must be above 0 and at most {MAX_AGE.days}d")


@dataclass
class PruneReport:
    """What a prune deleted (a dry run: would delete), and the oldest event kept."""

    older_than: timedelta
    events_deleted: int = 0
    alerts_deleted: int = 0
    oldest_event_id: int | None = None
    batches: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "events_deleted": self.events_deleted,
            "alerts_deleted": self.alerts_deleted,
            "oldest_event_id": self.oldest_event_id,
            "dry_run": self.dry_run,
            "older_than_seconds": int(self.older_than.total_seconds()),
            "batches": self.batches,
        }


def prune(
    dsn: str,
    older_than: timedelta,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
) -> PruneReport:
    """Delete events older than ``older_than`` (oldest first) and alerts
    acknowledged before it, a batch per transaction; never an open alert.

    A dry run counts what would go and changes nothing. Raises ConfigError
    for a bad age or batch size, DatabaseUnavailable or SchemaNotInstalled
    before anything is changed.
    """
    try:
        check_age(older_than)
    except ValueError as exc:
        raise ConfigError(f"age {older_than}: {exc}") from None
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ConfigError(f"batch size must be 1 to {MAX_BATCH_SIZE}, not {batch_size}")
    report = PruneReport(older_than, dry_run=dry_run)
    with db.connection(dsn, autocommit=True) as conn:
        db.require_schema(conn, event_log=True)
        while True:
            # autocommit: each call is a transaction of its own.
            row = conn.execute(
                query("prune_batch"),
                {"older_than": older_than, "batch_size": batch_size, "dry_run": dry_run},
            ).fetchone()
            assert row is not None
            batch: dict[str, Any] = row[0]
            report.batches += 1
            report.events_deleted += batch["events_deleted"]
            report.alerts_deleted += batch["alerts_deleted"]
            report.oldest_event_id = batch["oldest_event_id"]
            logger.debug(
                "batch %d: %d events, %d alerts",
                report.batches,
                batch["events_deleted"],
                batch["alerts_deleted"],
                extra={"action": "prune_batch"},
            )
            if not batch["more"]:
                break
    logger.info(
        "%s %d events and %d alerts in %d batch(es)",
        "would prune" if dry_run else "pruned",
        report.events_deleted,
        report.alerts_deleted,
        report.batches,
        extra={"action": "prune_done"},
    )
    return report
