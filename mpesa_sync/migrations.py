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
from mpesa_sync.pooler import require_session
from mpesa_sync.queries import query
from mpesa_sync.resources import FIRST_MIGRATION, migration_ids, resource_dir

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


# yoyo's tables for this install: their own schema, which no API role can
# reach (sql/queries/history.sql).
HISTORY_SCHEMA = "mpesa_sync_yoyo"


def yoyo_url(dsn: str, *, history_schema: str | None = HISTORY_SCHEMA) -> str:
    """A ``postgresql+psycopg://`` URL for yoyo from any libpq DSN or URL.

    It names the schema that holds yoyo's tables (yoyo sets its search_path
    to it); ``history_schema=None`` leaves them in ``public``, where releases
    before 0006 kept them.
    """
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
    if history_schema:
        info["schema"] = history_schema
    query_string = urlencode({k: str(v) for k, v in info.items()})
    return f"postgresql+psycopg://{netloc}/{quote(str(dbname), safe='')}" + (
        f"?{query_string}" if query_string else ""
    )


def migrate(dsn: str, *, create_tables: bool = False) -> MigrateReport:
    """Apply every pending migration; a second run is a no-op.

    Refuses a database without ``public.bars`` unless ``create_tables``: the
    first migration would create the host tables, which is right for a new
    database and wrong for a DSN that points at the wrong one. Refuses a host
    whose tables lack a column mpesa-sync reads or writes (``host_columns``),
    and a transaction-mode pooler (:mod:`mpesa_sync.pooler`), before it
    changes anything.

    Its locks are transaction locks, held by one open transaction for the
    whole run: a run that dies, or a pooler that drops the connection, leaves
    none behind.
    """
    report = MigrateReport()
    require_session(dsn, "mpesa-sync migrate")
    # Two connections: ``locks`` holds the install locks in a transaction that
    # takes nothing else (a table lock held there would block a migration
    # that alters the table, which waits on yoyo's own connection: a deadlock
    # no server could see); ``work`` reads and writes in autocommit.
    with db.connection(dsn, autocommit=True) as locks, db.connection(dsn, autocommit=True) as work:
        present = work.execute(query("host_tables_present")).fetchone()
        assert present is not None
        if not present[0] and not create_tables:
            raise HostSchemaMissing(
                f"{db.describe(dsn)} has no table public.bars; "
                "pass --create-tables to create the host tables in a new database"
            )
        check_host_columns(work, installed=db.schema_installed(work))
        with locks.transaction():
            _take_install_locks(locks)
            # read under the lock: a migrate that held it may have installed
            # (part of) the schema meanwhile, and its alerts and events are
            # not ours to report
            last_alert = last_event = 0
            if db.schema_installed(work):
                last_alert = work.execute(query("last_alert_id")).fetchone()[0]  # type: ignore[index]
                last_event = work.execute(query("newest_event_id")).fetchone()[0]  # type: ignore[index]
            work.execute(query("create_history_schema"))
            leftover = _move_history_and_clear_leftover(work, dsn)
            report.applied = _apply(dsn)
            if leftover:
                work.execute(query("restore_host_objects"), {"objects": leftover})
            if report.applied:
                rows = work.execute(query("alerts_since"), {"after": last_alert}).fetchall()
                report.refused = [
                    {"alert_id": r[0], "bar_id": str(r[2]), **r[3]}
                    for r in rows
                    if r[1] == "fix_refused"
                ]
                fixed = work.execute(query("reconcile_events_after"), {"after": last_event})
                report.fixed = int(fixed.fetchone()[0])  # type: ignore[index]
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


def _take_install_locks(conn: psycopg.Connection[Any]) -> None:
    """The migrate lock (a second migrate waits its turn) and the reconcile
    lock (the 'reconcile' events written meanwhile are the install's own
    fixes), both to the end of the caller's transaction."""
    if not conn.execute(query("try_migrate_lock")).fetchone()[0]:  # type: ignore[index]
        for pid, state, application in conn.execute(query("migrate_lock_holders")):
            logger.warning(
                "waiting for the migrate lock, held by backend %s (%s, %s); if no migrate "
                "or rollback is running, it is a session lock that a release before 0006 "
                "left on a pooled connection: end it with SELECT pg_terminate_backend(%s)",
                pid,
                application or "no application name",
                state or "its state hidden from this role",
                pid,
                extra={"action": "migrate_lock_wait"},
            )
        conn.execute(query("take_migrate_lock"))
    conn.execute(query("take_reconcile_lock"))


def _move_history_and_clear_leftover(conn: psycopg.Connection[Any], dsn: str) -> list[str]:
    """Bring yoyo's record of our migrations to :data:`HISTORY_SCHEMA`, and
    remove what a half-finished install left (schema mpesa_sync with no
    record of it). Returns the host objects that leftover had recorded
    creating, for the new install to record again. Runs under the install
    locks, before yoyo applies anything."""
    with _backend(dsn) as backend:
        backend.ensure_internal_schema_updated()  # yoyo's tables, in HISTORY_SCHEMA
    with conn.transaction():
        state = conn.execute(query("history_state")).fetchone()
        assert state is not None
        has_schema, _, public_history, public_log, public_lock = state
        if public_history:
            ours = migration_ids()
            moved = conn.execute(query("move_history_from_public"), {"ours": ours}).rowcount
            if public_log:
                conn.execute(query("move_log_from_public"), {"ours": ours})
            if public_log and public_lock:
                left = conn.execute(query("public_history_rows")).fetchone()[0]  # type: ignore[index]
                if left == 0:
                    conn.execute(query("drop_public_history"))
            if moved:
                logger.info(
                    "moved yoyo's record of %d migration(s) from public to %s",
                    moved,
                    HISTORY_SCHEMA,
                    extra={"action": "history_moved"},
                )
        applied = {row[0] for row in conn.execute(query("applied_migrations"))}
        if not has_schema or FIRST_MIGRATION in applied:
            return []
        events, alerts, recorded = conn.execute(query("leftover_install")).fetchone()  # type: ignore[misc]
        holds_data = any(
            conn.execute(query(name)).fetchone()[0]  # type: ignore[index]
            for name, present in (("leftover_has_events", events), ("leftover_has_alerts", alerts))
            if present
        )
        host_objects = (
            conn.execute(query("leftover_host_objects")).fetchone()[0] if recorded else []  # type: ignore[index]
        )
        if holds_data:
            raise MigrationError(
                "schema mpesa_sync is here but yoyo has no record of installing it, and it "
                "holds events or alerts, so migrate will not remove it: it was made by hand "
                "(sql/schema.sql?) or by an interrupted install; save what you need from it, "
                "then DROP SCHEMA mpesa_sync CASCADE and migrate again; nothing was changed"
            )
        conn.execute(query("drop_leftover_schema"))
        logger.warning(
            "removed what an interrupted install left (schema mpesa_sync with no yoyo "
            "record of it, no events and no alerts); installing afresh",
            extra={"action": "leftover_removed"},
        )
        return list(host_objects)


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
    Refuses a transaction-mode pooler, as :func:`migrate` does.
    """
    require_session(dsn, "mpesa-sync rollback")
    with db.connection(dsn, autocommit=True) as conn:
        schema, history, public_history, *_ = conn.execute(query("history_state")).fetchone()  # type: ignore[misc]
        recorded = bool(history and conn.execute(query("applied_migrations")).fetchone())
        if public_history and not recorded:
            recorded = bool(
                conn.execute(
                    query("applied_migrations_in_public"), {"ours": migration_ids()}
                ).fetchone()
            )
        if not (schema and recorded):
            raise SchemaNotInstalled(
                f"{db.describe(dsn)} holds no mpesa-sync install to roll back "
                f"({'no yoyo history of it' if schema else 'no schema mpesa_sync'}); "
                "is this the right database?"
            )
        # the install locks in a transaction that takes nothing else (see migrate)
        with conn.transaction():
            _take_install_locks(conn)
            with db.connection(dsn, autocommit=True) as work:
                work.execute(query("create_history_schema"))
                _move_history_and_clear_leftover(work, dsn)
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
