"""What `mpesa-sync status` reports: the state of an install, read-only.

Everything is read in one READ ONLY, REPEATABLE READ transaction, so the
figures agree with each other. Nothing here needs yoyo: the applied
migrations are read from yoyo's own table, the packaged ones from the files.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from mpesa_sync import __version__, db, realtime
from mpesa_sync.queries import query
from mpesa_sync.resources import FIRST_MIGRATION, migration_ids


@dataclass(frozen=True)
class HostColumn:
    """A column of the host's tables that mpesa-sync reads or writes."""

    table: str
    column: str
    type: str
    present: bool  # there, with a type mpesa-sync accepts


@dataclass(frozen=True)
class EventLogStatus:
    """``mpesa_sync.status_events`` as one log: how much it keeps, and which log it is."""

    events: int
    oldest_event_id: int | None
    newest_event_id: int
    pruned_through: int
    generation: uuid.UUID

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "generation": str(self.generation)}


@dataclass
class StatusReport:
    """The state of the install in one database.

    ``installed``: the sync functions are there. ``current``: installed, and
    no packaged migration is pending.
    """

    installed: bool
    applied: list[str]
    pending: list[str]
    host_columns: list[HostColumn]
    event_log: EventLogStatus | None = None
    open_alerts: int | None = None
    # yoyo's record of the install is still in public, where a release before
    # 0006 left it (and the API roles may reach it); migrate moves it
    history_in_public: bool = False
    # schema mpesa_sync with no yoyo record of installing it: an interrupted
    # install (migrate removes it when it holds no events or alerts)
    half_installed: bool = False
    # the broadcast sink (docs/supabase.md, "Live status in the customer app")
    realtime: realtime.RealtimeStatus | None = None
    version: str = field(default=__version__)

    @property
    def current(self) -> bool:
        return self.installed and not self.pending

    @property
    def missing_columns(self) -> list[HostColumn]:
        return [c for c in self.host_columns if not c.present]

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "installed": self.installed,
            "current": self.current,
            "migrations": {"applied": self.applied, "pending": self.pending},
            "event_log": self.event_log.as_dict() if self.event_log else None,
            "open_alerts": self.open_alerts,
            "realtime": self.realtime.as_dict() if self.realtime else None,
            "host_columns": [asdict(c) for c in self.host_columns],
            "history_in_public": self.history_in_public,
            "half_installed": self.half_installed,
        }


def status(dsn: str) -> StatusReport:
    """Read the state of the install; raises DatabaseUnavailable or
    DatabaseError when it cannot be read, never because nothing is installed."""
    with db.connection(dsn) as conn:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        columns = [
            HostColumn(table, column, data_type, bool(ok))
            for table, column, data_type, _, _, ok in conn.execute(query("host_columns"))
        ]
        state = db.fetch_one(conn, query("history_state"))
        applied = (
            [row[0] for row in conn.execute(query("applied_migrations"))]
            if state["history"]
            else []
        )
        in_public = []
        if state["public_history"]:
            in_public = [
                row[0]
                for row in conn.execute(
                    query("applied_migrations_in_public"), {"ours": migration_ids()}
                )
            ]
        installed = db.fetch_one(conn, query("schema_installed"))
        core, event_log = installed["core"], installed["event_log"]
        applied = applied or in_public
        schema = state["schema"]
        report = StatusReport(
            installed=bool(core),
            applied=applied,
            pending=[m for m in migration_ids() if m not in applied],
            host_columns=columns,
            history_in_public=bool(in_public),
            half_installed=bool(schema) and FIRST_MIGRATION not in applied,
        )
        if core:
            report.open_alerts = int(db.fetch_one(conn, query("open_alerts"))["count"])
            report.realtime = realtime.sink_status(conn)
        if event_log:
            log = db.fetch_one(conn, query("event_log_status"))
            report.event_log = EventLogStatus(
                log["events"],
                log["oldest_event_id"],
                log["newest_event_id"],
                log["pruned_through"],
                log["generation"],
            )
    return report
