"""Read-only check that every bar's ``mpesa_enabled`` follows its credentials.

``verify`` finds drift with one set-based pass over every bar (the
``drift_scan`` query, shared with reconcile) in one READ ONLY, REPEATABLE READ
transaction, so the counts, the listed bars and the open alerts all come from
one snapshot. ``write_prometheus`` exports a report in
the textfile-collector format.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from mpesa_sync import db
from mpesa_sync.errors import ConfigError
from mpesa_sync.queries import query

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftedBar:
    """A bar whose stored ``mpesa_enabled`` differs from what its credentials say."""

    bar_id: uuid.UUID
    mpesa_enabled: bool | None
    expected: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "bar_id": str(self.bar_id),
            "mpesa_enabled": self.mpesa_enabled,
            "expected": self.expected,
        }


@dataclass
class VerifyReport:
    """What one verify saw. ``drifted`` may be cut short; ``drifted_total`` is not."""

    checked: int
    drifted_total: int
    drifted: list[DriftedBar] = field(default_factory=list)
    open_alerts: int = 0
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def consistent(self) -> bool:
        return self.drifted_total == 0

    @property
    def truncated(self) -> bool:
        return len(self.drifted) < self.drifted_total

    def as_dict(self) -> dict[str, Any]:
        return {
            "consistent": self.consistent,
            "checked": self.checked,
            "drifted_total": self.drifted_total,
            "truncated": self.truncated,
            "drifted": [bar.as_dict() for bar in self.drifted],
            "open_alerts": self.open_alerts,
            "checked_at": self.checked_at.isoformat(),
        }


@dataclass(frozen=True)
class DriftScan:
    """One set-based pass over every bar."""

    checked: int
    drifted: int
    sample: list[uuid.UUID]  # up to the limit asked for, in no particular order


def scan_drift(conn: psycopg.Connection[Any], *, limit: int | None) -> DriftScan:
    """Count checked and drifted bars, and collect up to ``limit`` drifted ids.

    Runs inside the caller's transaction and raises its work_mem for the rest
    of it (see sql/queries/drift.sql).
    """
    conn.execute(query("set_work_mem"))
    row = conn.execute(query("drift_scan"), {"limit": limit}).fetchone()
    assert row is not None
    return DriftScan(int(row[0]), int(row[1]), list(row[2]))


def verify(dsn: str, *, limit: int | None = 100) -> VerifyReport:
    """Check every bar without changing anything.

    Lists up to ``limit`` drifted bars (all of them when None), sorted by id.
    Raises DatabaseUnavailable or SchemaNotInstalled (exit code 2).
    """
    with db.connection(dsn) as conn:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        db.require_schema(conn)
        scan = scan_drift(conn, limit=limit)
        drifted: list[DriftedBar] = []
        if scan.sample:
            rows = conn.execute(query("bar_status"), {"bar_ids": scan.sample}).fetchall()
            drifted = [DriftedBar(*row) for row in rows]
        open_alerts = db.fetch_one(conn, query("open_alerts"))["count"]
    report = VerifyReport(scan.checked, scan.drifted, drifted, int(open_alerts))
    logger.debug(
        "checked %d bars: %d drifted, %d open alerts",
        report.checked,
        report.drifted_total,
        report.open_alerts,
        extra={"action": "verify"},
    )
    return report


def write_prometheus(report: VerifyReport, path: Path) -> None:
    """Write the report for node_exporter's textfile collector, atomically.

    prometheus_client writes a temporary file beside ``path`` and renames it,
    so the collector never reads half a file.
    """
    # Imported here: only --prometheus-file needs it, and it costs a verify
    # run from cron about a tenth of a second to load.
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    gauges = (
        (
            "mpesa_sync_drifted_bars",
            "Bars whose mpesa_enabled differs from their credentials.",
            report.drifted_total,
        ),
        ("mpesa_sync_bars_checked", "Bars checked by the last verify.", report.checked),
        ("mpesa_sync_open_alerts", "Alerts not yet acknowledged.", report.open_alerts),
        (
            "mpesa_sync_last_check_timestamp_seconds",
            "When the last verify ran (Unix time).",
            report.checked_at.timestamp(),
        ),
    )
    for name, documentation, value in gauges:
        Gauge(name, documentation, registry=registry).set(value)
    try:
        write_to_textfile(str(path), registry)
    except OSError as exc:
        raise ConfigError(f"cannot write the Prometheus file {path}: {exc.strerror}") from exc
    logger.debug("wrote %s", path, extra={"action": "verify_prometheus"})
