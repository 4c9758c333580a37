"""Apply and roll back the yoyo migrations in ``migrations/``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg import conninfo
from yoyo import get_backend, read_migrations
from yoyo.exceptions import LockTimeout

from mpesa_sync import db, realtime
from mpesa_sync.errors import (
    HostSchemaMissing,
    MigrationError,
    SchemaNotInstalled,
    first_line,
    with_sqlstate,
)
from mpesa_sync.queries import query
from mpesa_sync.resources import resource_dir

logger = logging.getLogger(__name__)

# yoyo's own lock only guards against `yoyo apply` run beside us; our
# advisory lock already makes a second `mpesa-sync migrate` wait its turn.
_YOYO_LOCK_TIMEOUT = 600


@dataclass
class MigrateReport:
    """The migrations a run applied, the bars whose drift the install fixed
    (how many), and the bars that refused the install's fix."""

    applied: list[str] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    fixed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "fixed": self.fixed, "refused": self.refused}


def yoyo_url(dsn: str) -> str:
    """A ``postgresql+psycopg://`` URL for yoyo from any libpq DSN or URL."""
    try:
        info = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise db.invalid_dsn(exc) from exc
    user = info.pop("user", None)
    password = info.pop("password", None)
    host = info.pop("host", None)
    port = info.pop("port", None)
    dbname = info.pop("dbname", None) or user or ""
    auth = ""
    if user:
        auth = quote(str(user), safe="")
        if password:
            auth += ":" + quote(str(password), safe="")
        auth += "@"
    netloc = auth
    if host and not str(host).startswith("/") and "," not in str(host):
        netloc += str(host) + (f":{port}" if port else "")
    else:
        # A socket folder or a host list cannot sit in the URL's netloc;
        # yoyo hands query arguments to psycopg.connect unchanged.
        if host:
            info["host"] = host
        if port:
            info["port"] = port
    query_string = urlencode({k: str(v) for k, v in info.items()})
    return f"postgresql+psycopg://{netloc}/{quote(str(dbname), safe='')}" + (
        f"?{query_string}" if query_string else ""
    )


def migrate(dsn: str, *, create_tables: bool = False) -> MigrateReport:
    """Apply every pending migration; a second run is a no-op.

    Refuses a database without ``public.bars`` unless ``create_tables``: the
    first migration would create the host tables, which is right for a new
    database and wrong for a DSN that points at the wrong one. Refuses a host
    whose tables lack a column mpesa-sync reads or writes (``host_columns``).
    """
    report = MigrateReport()
    with db.connection(dsn, autocommit=True) as conn:
        present = conn.execute(query("host_tables_present")).fetchone()
        assert present is not None
        if not present[0] and not create_tables:
            raise HostSchemaMissing(
                f"{db.describe(dsn)} has no table public.bars; "
                "pass --create-tables to create the host tables in a new database"
            )
        installed = db.schema_installed(conn)
        check_host_columns(conn, installed=installed)
        conn.execute(query("take_migrate_lock"))
        conn.execute(query("hold_reconcile_lock"))
        try:
            last_alert = last_event = 0
            # read again under the lock: a migrate that held it may have
            # installed (part of) the schema meanwhile, and its alerts and
            # events are not ours to report
            if db.schema_installed(conn):
                last_alert = conn.execute(query("last_alert_id")).fetchone()[0]  # type: ignore[index]
                last_event = conn.execute(query("newest_event_id")).fetchone()[0]  # type: ignore[index]
            report.applied = _apply(dsn)
            if report.applied:
                rows = conn.execute(query("alerts_since"), {"after": last_alert}).fetchall()
                report.refused = [
                    {"alert_id": r[0], "bar_id": str(r[2]), **r[3]}
                    for r in rows
                    if r[1] == "fix_refused"
                ]
                fixed = conn.execute(query("reconcile_events_after"), {"after": last_event})
                report.fixed = int(fixed.fetchone()[0])  # type: ignore[index]
        finally:
            conn.execute(query("release_reconcile_lock"))
            conn.execute(query("release_migrate_lock"))
    if report.fixed:
        logger.info(
            "the install fixed %d drifted bar(s)", report.fixed, extra={"action": "install_fixed"}
        )
    for bar in report.refused:
        logger.warning(
            "bar %s refused its status fix: %s",
            bar["bar_id"],
            with_sqlstate(str(bar.get("error")), bar.get("sqlstate")),
            extra={"action": "install_fix_refused"},
        )
    return report


def check_host_columns(conn: psycopg.Connection[Any], *, installed: bool) -> None:
    """Raise HostSchemaMissing, naming each one, when a host table lacks a
    column mpesa-sync reads or writes (or has it with another type).

    A table that is missing is not checked: the install creates it. Neither
    is a missing ``bars.mpesa_enabled`` before the install, which adds it.
    """
    missing = []
    for table, column, data_type, table_present, column_present, ok in conn.execute(
        query("host_columns")
    ):
        adds_it = (table, column) == ("bars", "mpesa_enabled") and not installed
        if table_present and not ok and not (adds_it and not column_present):
            missing.append(f"public.{table}.{column} ({data_type})")
    if missing:
        raise HostSchemaMissing(
            f"the host's tables lack what mpesa-sync reads or writes: {', '.join(missing)}; "
            "nothing was changed (see the host requirements in docs/install.md)"
        )


def rollback(dsn: str, *, count: int | None = 1) -> list[str]:
    """Roll back the newest ``count`` applied migrations (all when None).

    Raises SchemaNotInstalled, having changed nothing, on a database that
    holds no install (no schema mpesa_sync, or no yoyo history of it): yoyo
    would create its tables there, and it is more likely a wrong DSN.
    """
    with db.connection(dsn, autocommit=True) as conn:
        schema, history = conn.execute(query("rollback_target")).fetchone()  # type: ignore[misc]
    if not (schema and history):
        raise SchemaNotInstalled(
            f"{db.describe(dsn)} holds no mpesa-sync install to roll back "
            f"({'no yoyo history of it' if schema else 'no schema mpesa_sync'}); "
            "is this the right database?"
        )
    migrations = read_migrations(str(resource_dir("migrations")))
    with db.translated(dsn), _backend(dsn) as backend, _locked(backend):
        to_rollback = backend.to_rollback(migrations)
        if count is not None:
            to_rollback = to_rollback[:count]
        if any(m.id <= _REALTIME_SINK_NEEDS for m in to_rollback):
            _disable_realtime(dsn)
        _run(backend.rollback_migrations, to_rollback)
        return [m.id for m in to_rollback]


# `mpesa-sync realtime enable` (sql/optional/realtime_enable.sql) builds on the
# event log of this migration and those before it; a rollback that takes out
# any of them first takes out everything enable added.
_REALTIME_SINK_NEEDS = "0005_mpesa_sync_retention_v1"


def _disable_realtime(dsn: str) -> None:
    with db.connection(dsn) as conn:
        sink = realtime.sink_status(conn)
        if sink.enabled or sink.policies or sink.state_call:
            logger.info(
                "removing the realtime broadcast first (`mpesa-sync realtime enable` "
                "adds it again after migrate)",
                extra={"action": "realtime_disable"},
            )
        realtime.disable_in(conn)


def _apply(dsn: str) -> list[str]:
    migrations = read_migrations(str(resource_dir("migrations")))
    with _backend(dsn) as backend, _locked(backend):
        to_apply = backend.to_apply(migrations)
        _run(backend.apply_migrations, to_apply)
        return [m.id for m in to_apply]


class _backend:
    """yoyo's backend as a context manager that always closes its connection."""

    def __init__(self, dsn: str) -> None:
        url = yoyo_url(dsn)
        try:
            self.backend = get_backend(url)
        except psycopg.Error as exc:
            raise db.connect_failed(dsn, exc) from exc

    def __enter__(self) -> Any:
        return self.backend

    def __exit__(self, *exc: object) -> None:
        self.backend.connection.close()


class _locked:
    def __init__(self, backend: Any) -> None:
        self.lock = backend.lock(timeout=_YOYO_LOCK_TIMEOUT)

    def __enter__(self) -> None:
        try:
            self.lock.__enter__()
        except LockTimeout as exc:
            raise MigrationError(
                "another yoyo run holds the migration lock; "
                "if no run is active, clear it with `yoyo break-lock`"
            ) from exc

    def __exit__(self, *exc: Any) -> None:
        self.lock.__exit__(*exc)


def _run(step: Any, migrations: Any) -> None:
    try:
        step(migrations)
    except psycopg.Error as exc:
        message = with_sqlstate(f"migration failed: {first_line(exc)}", exc.sqlstate)
        raise MigrationError(message) from exc
