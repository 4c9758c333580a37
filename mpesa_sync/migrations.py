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

from mpesa_sync import db
from mpesa_sync.errors import HostSchemaMissing, MigrationError, first_line, with_sqlstate
from mpesa_sync.queries import query
from mpesa_sync.resources import resource_dir

logger = logging.getLogger(__name__)

# yoyo's own lock only guards against `yoyo apply` run beside us; our
# advisory lock already makes a second `mpesa-sync migrate` wait its turn.
_YOYO_LOCK_TIMEOUT = 600


@dataclass
class MigrateReport:
    """The migrations a run applied, and the bars that refused the install's fix."""

    applied: list[str] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "refused": self.refused}


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
    database and wrong for a DSN that points at the wrong one.
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
        conn.execute(query("take_migrate_lock"))
        try:
            last_alert = 0
            if db.schema_installed(conn):
                last_alert = conn.execute(query("last_alert_id")).fetchone()[0]  # type: ignore[index]
            report.applied = _apply(dsn)
            if report.applied:
                rows = conn.execute(query("alerts_since"), {"after": last_alert}).fetchall()
                report.refused = [
                    {"alert_id": r[0], "bar_id": str(r[2]), **r[3]}
                    for r in rows
                    if r[1] == "fix_refused"
                ]
        finally:
            conn.execute(query("release_migrate_lock"))
    for bar in report.refused:
        logger.warning(
            "bar %s refused its status fix: %s",
            bar["bar_id"],
            with_sqlstate(str(bar.get("error")), bar.get("sqlstate")),
            extra={"action": "install_fix_refused"},
        )
    return report


def rollback(dsn: str, *, count: int | None = 1) -> list[str]:
    """Roll back the newest ``count`` applied migrations (all when None)."""
    migrations = read_migrations(str(resource_dir("migrations")))
    with db.translated(dsn), _backend(dsn) as backend, _locked(backend):
        to_rollback = backend.to_rollback(migrations)
        if count is not None:
            to_rollback = to_rollback[:count]
        _run(backend.rollback_migrations, to_rollback)
        return [m.id for m in to_rollback]


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
