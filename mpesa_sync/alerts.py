"""Alerts: record one, list them, acknowledge one.

Recording goes through ``mpesa_sync.raise_alert_v1``, which also announces
the alert on channel ``mpesa_alerts``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from mpesa_sync import db
from mpesa_sync.errors import AlertNotFound, MpesaSyncError, first_line
from mpesa_sync.queries import query

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    id: int
    created_at: datetime
    kind: str
    bar_id: uuid.UUID | None
    detail: dict[str, Any]
    acknowledged_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "kind": self.kind,
            "bar_id": str(self.bar_id) if self.bar_id else None,
            "detail": self.detail,
            "acknowledged_at": self.acknowledged_at.isoformat() if self.acknowledged_at else None,
        }


def raise_alert(
    dsn: str, kind: str, bar_id: uuid.UUID | None, detail: dict[str, Any]
) -> int | None:
    """Record an alert over a fresh connection and return its id.

    Used when the caller's own connection or transaction has just failed. If
    the alert cannot be written either, that is logged and None returned:
    the caller is already reporting a failure and must not lose it to this one.
    """
    try:
        with db.connection(dsn, autocommit=True) as conn:
            row = conn.execute(
                query("raise_alert"), {"kind": kind, "bar_id": bar_id, "detail": Jsonb(detail)}
            ).fetchone()
    except MpesaSyncError as exc:  # db.connection translates driver errors
        logger.error(
            "could not record a %s alert for bar %s: %s",
            kind,
            bar_id,
            first_line(exc),
            extra={"action": "alert_failed"},
        )
        return None
    assert row is not None
    return int(row[0])


def list_alerts(
    conn: psycopg.Connection[Any], *, include_acknowledged: bool = False
) -> list[Alert]:
    """Open alerts in id order; every alert when ``include_acknowledged``."""
    with conn.cursor(row_factory=class_row(Alert)) as cur:
        cur.execute(query("list_alerts"), {"include_acknowledged": include_acknowledged})
        return cur.fetchall()


def acknowledge(conn: psycopg.Connection[Any], alert_id: int) -> tuple[Alert, bool]:
    """Acknowledge one alert; returns it and whether it was open until now."""
    row = conn.execute(query("acknowledge_alert"), {"id": alert_id}).fetchone()
    if row is None:
        raise AlertNotFound(f"no alert with id {alert_id}")
    *fields, newly = row
    alert = Alert(*fields)
    logger.info(
        "alert %d %s",
        alert_id,
        "acknowledged" if newly else "was already acknowledged",
        extra={"action": "alert_ack"},
    )
    return alert, bool(newly)
