"""A managed host (Supabase, RDS) as its users run us: the install's catalog,
what Supabase's linter says of it, what each API role can reach, and the
states an interrupted or older install leaves behind.

The tests run as the owner who is no superuser, under Supabase's default
privileges (tests/support/database.py), unless they say otherwise.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devtools.older import LAST_RELEASE, migrate_up_to
from mpesa_sync import migrations
from mpesa_sync.resources import resource_dir
from tests.support.catalog import describe
from tests.support.cli import assert_one_line_error, run_cli
from tests.support.database import OWNER, Database, fresh_database, templates
from tests.support.realtime import install_standin
from tests.support.servers import Server
from tests.support.writers import TOGGLE

LINTS = (Path(__file__).parent / "sql" / "security_lints.sql").read_text()
OPTIONAL = resource_dir("sql") / "optional"
DEFAULT_EXPOSURE = "public,graphql_public"  # the Supabase API's default
WITH_MPESA_SYNC = "public,graphql_public,mpesa_sync"  # as docs/supabase.md allows
EXPOSURES = pytest.mark.parametrize("exposed", [DEFAULT_EXPOSURE, WITH_MPESA_SYNC])


def findings(db: Database, exposed: str) -> set[tuple[str, str, str]]:
    with db.connect() as conn:
        conn.execute("SELECT set_config('pgrst.db_schemas', %s, false)", (exposed,))
        return {tuple(row) for row in conn.execute(LINTS)}


def apply(db: Database, name: str) -> None:
    with db.connect() as conn:
        conn.execute((OPTIONAL / name).read_text())


# -- Supabase's linter ----------------------------------------------------------------


@EXPOSURES
def test_the_install_adds_no_lint_finding(host_db: Database, exposed: str) -> None:
    before = findings(host_db, exposed)
    assert ("0011_function_search_path_mutable", "WARN", "public.set_updated_at") in before
    assert migrations.migrate(host_db.dsn).applied
    apply(host_db, "public_save_settings.sql")  # the optional RPC wrapper too
    assert findings(host_db, exposed) - before == set()


def test_each_lint_finds_what_it_names(host_db: Database) -> None:
    """The checks above could fail: each finds an object made to break it."""
    host_db.execute("""
        CREATE SCHEMA api;
        GRANT USAGE ON SCHEMA api TO anon, authenticated;
        CREATE TABLE api.open_table (id int);
        GRANT SELECT ON api.open_table TO anon;
        CREATE TABLE public.locked (id int);
        ALTER TABLE public.locked ENABLE ROW LEVEL SECURITY;
        CREATE VIEW api.definer_view AS SELECT 1 AS one;
        GRANT SELECT ON api.definer_view TO authenticated;
        CREATE FUNCTION api.definer() RETURNS int LANGUAGE sql SECURITY DEFINER
            SET search_path = pg_catalog AS 'SELECT 1';
        GRANT EXECUTE ON FUNCTION api.definer() TO anon, authenticated;
        CREATE FUNCTION api.mutable() RETURNS int LANGUAGE sql AS 'SELECT 1';
    """)
    found = {(lint[:4], obj) for lint, _, obj in findings(host_db, "public,api")}
    assert {
        ("0013", "api.open_table"),
        ("0026", "api.open_table"),
        ("0008", "public.locked"),
        ("0010", "api.definer_view"),
        ("0027", "api.definer_view"),
        ("0028", "api.definer"),
        ("0029", "api.definer"),
        ("0011", "api.mutable"),
    } <= found
    # a schema the API does not serve is no 0010, 0013 or 0028 finding
    hidden = {(lint[:4], obj) for lint, _, obj in findings(host_db, "public")}
    assert not {("0013", "api.open_table"), ("0010", "api.definer_view")} & hidden


@EXPOSURES
def test_customers_reading_payment_options_is_what_the_docs_say(db: Database, exposed: str) -> None:
    before = findings(db, exposed)
    apply(db, "customer_payment_options.sql")
    added = {(lint[:4], obj) for lint, _, obj in findings(db, exposed) - before}
    view = "mpesa_sync.payment_options"
    expected = {("0026", view), ("0027", view)}  # pg_graphql shows it, as granted
    if exposed == WITH_MPESA_SYNC:
        expected.add(("0010", view))  # a view with its owner's rights, on purpose
    assert added == expected
    doc = resource_dir("docs") if False else Path(__file__).parents[1] / "docs" / "supabase.md"
    text = doc.read_text()
    for lint in ("0010", "0026", "0027"):
        assert lint in text, f"docs/supabase.md must name lint {lint} of the opt-in"


# -- What each API role can reach ----------------------------------------------------

# What each API role can reach in the schemas named (LIKE patterns): by
# default every schema of ours (mpesa_sync, mpesa_sync_yoyo, and
# mpesa_sync_live while the realtime sink is on).
REACH = """
    WITH schemas AS (
        SELECT n.oid, n.nspname
        FROM pg_namespace AS n
        WHERE n.nspname LIKE ANY (%(schemas)s)
    )
    SELECT r.role, x.kind, x.object
    FROM (VALUES ('anon'), ('authenticated'), ('service_role')) AS r (role)
    CROSS JOIN LATERAL (
        SELECT 'schema' AS kind, s.nspname::text AS object
        FROM schemas AS s
        WHERE has_schema_privilege(r.role, s.oid, 'USAGE')
        UNION ALL
        SELECT 'read', c.oid::regclass::text
        FROM pg_class AS c
        WHERE c.relnamespace IN (SELECT oid FROM schemas)
          AND c.relkind IN ('r', 'v', 'm', 'p')
          AND has_table_privilege(r.role, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
        UNION ALL
        SELECT 'call', p.oid::regprocedure::text
        FROM pg_proc AS p
        WHERE p.pronamespace IN (SELECT oid FROM schemas)
          AND has_function_privilege(r.role, p.oid, 'EXECUTE')
    ) AS x
    ORDER BY 1, 2, 3
"""
OURS = ["mpesa\\_sync", "mpesa\\_sync\\_%"]


def reach(db: Database, schemas: list[str] = OURS) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) for r in db.query(REACH, {"schemas": schemas})]


SAVE_SETTINGS_ARGS = "uuid,text,text,bytea,bytea,bytea,boolean"


def test_what_each_api_role_can_reach(db: Database) -> None:
    assert reach(db) == [
        ("service_role", "call", f"mpesa_sync.save_settings({SAVE_SETTINGS_ARGS})"),
        ("service_role", "read", "mpesa_sync.payment_options"),
        ("service_role", "schema", "mpesa_sync"),
    ]  # fmt: skip
    # and what anon can do through the API with the public key: nothing of ours
    with db.connect() as conn:
        conn.execute("SET ROLE anon")
        for statement in (
            "SELECT * FROM mpesa_sync_yoyo._yoyo_migration",
            "DELETE FROM mpesa_sync_yoyo._yoyo_migration",
            "SELECT * FROM mpesa_sync.status_events",
            "SELECT * FROM mpesa_sync.payment_options",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    assert db.scalar("SELECT to_regclass('public._yoyo_migration')") is None


# -- The realtime sink (sql/optional/realtime_enable.sql) ------------------------------

API_ROLES = ("anon", "authenticated", "service_role")
POLICIES = """
    SELECT p.polname, p.polcmd, p.polroles::regrole[]::text AS roles
    FROM pg_policy AS p
    WHERE p.polrelid = 'realtime.messages'::regclass
    ORDER BY 1
"""


@EXPOSURES
def test_the_realtime_sink_adds_no_lint_finding_and_disable_undoes_enable(
    db: Database, exposed: str
) -> None:
    """On a database with Realtime, `realtime enable` (as the owner who is
    no superuser) adds no finding of Supabase's linter, opens to the API
    roles the state call and the log position in mpesa_sync_live and nothing
    else (not schema mpesa_sync, which 0006 closed), and `realtime disable`
    leaves exactly what they could reach before."""
    install_standin(db)
    everywhere = [*OURS, "public", "realtime"]
    lints, reached, policies = findings(db, exposed), reach(db, everywhere), db.query(POLICIES)
    assert ("anon", "schema", "mpesa_sync") not in reached  # 0006 closed it

    on = run_cli("realtime", "enable", "--dsn", db.dsn)
    assert on.code == 0, on.stderr
    assert findings(db, exposed) - lints == set()
    now = reach(db, everywhere)
    assert set(reached) <= set(now)
    assert set(now) - set(reached) == {
        (role, kind, name)
        for role in API_ROLES
        for kind, name in (
            ("schema", "mpesa_sync_live"),
            ("call", "mpesa_sync_live.log_position_v1()"),
            ("call", "mpesa_status(uuid)"),  # in public, on the search_path
        )
    }
    assert len(db.query(POLICIES)) == len(policies) + 2

    off = run_cli("realtime", "disable", "--dsn", db.dsn)
    assert off.code == 0, off.stderr
    assert reach(db, everywhere) == reached
    assert db.query(POLICIES) == policies
    assert findings(db, exposed) == lints


# -- One end state for every install --------------------------------------------------


def ours(catalog: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of a catalog description that are mpesa-sync's: what is in its
    schema, and its triggers on the host's tables."""
    return {
        name: [
            r for r in rows
            if r[0] == "mpesa_sync" or (name == "triggers" and str(r[1]).startswith("mpesa_sync"))
        ]
        for name, rows in catalog.items()
    }  # fmt: skip


def test_owner_superuser_and_upgraded_installs_end_the_same(server: Server) -> None:
    host_owner, _ = templates("owner")
    host_super, _ = templates("superuser")
    with (
        fresh_database(server, host_owner, role="owner") as by_owner,
        fresh_database(server, host_super) as by_superuser,
        fresh_database(server, host_super) as upgraded,
    ):
        migrations.migrate(by_owner.dsn)
        migrations.migrate(by_superuser.dsn)
        # the release as DBAs applied it, as a superuser (the only role it
        # could be applied as), with data, a listener, and a host's own yoyo
        # migration in the same history table
        assert migrate_up_to(upgraded.dsn, LAST_RELEASE)[-1] == LAST_RELEASE
        upgraded.execute(
            "INSERT INTO public._yoyo_migration VALUES ('hosthash', '0001_host_own', now())"
        )
        bars = [upgraded.add_bar(f"bar {i}") for i in range(5)]
        for bar in bars:
            upgraded.add_credentials(bar)
        status = run_cli("status", "--dsn", upgraded.dsn, "--format", "json")
        assert '"history_in_public": true' in status.stdout
        with psycopg.connect(upgraded.dsn, autocommit=True) as listener:
            listener.execute("LISTEN mpesa_status")
            report = migrations.migrate(upgraded.dsn)
            assert report.applied == ["0006_mpesa_sync_managed_host_v1", "0007_mpesa_sync_v3"]
            upgraded.execute(TOGGLE, (bars[0],))
            heard = list(listener.notifies(timeout=10, stop_after=1))
        assert len(heard) == 1 and str(bars[0]) in heard[0].payload
        assert upgraded.drift() == []
        # ours moved out of public; the host's own record stayed where it was
        assert upgraded.scalar(
            "SELECT array_agg(migration_id ORDER BY 1) FROM public._yoyo_migration"
        ) == ["0001_host_own"]
        assert (
            upgraded.scalar("SELECT count(*) FROM mpesa_sync_yoyo._yoyo_migration")
            == len(report.applied) + 5
        )
        status = run_cli("status", "--dsn", upgraded.dsn, "--format", "json")
        assert status.code == 0 and '"history_in_public": false' in status.stdout

        owner_state = ours(describe(by_owner.dsn, owner=OWNER))
        assert owner_state == ours(describe(by_superuser.dsn, owner="postgres"))
        assert owner_state == ours(describe(upgraded.dsn, owner="postgres"))
        assert owner_state["functions"] and owner_state["triggers"]
        # no function sets a custom parameter; every SECURITY DEFINER one pins search_path
        for db in (by_owner, upgraded):
            assert db.query("""
                SELECT p.proname FROM pg_proc AS p
                WHERE p.pronamespace = 'mpesa_sync'::regnamespace
                  AND (EXISTS (SELECT 1 FROM unnest(p.proconfig) AS c WHERE c LIKE '%.%=%')
                       OR (p.prosecdef
                           AND NOT 'search_path=pg_catalog, pg_temp' = ANY (p.proconfig)))
            """) == []  # fmt: skip


def test_the_released_install_fails_as_the_owner_and_this_one_does_not(
    host_db: Database,
) -> None:
    """Why 0002-0004 were edited: the release could not install here at all."""
    with pytest.raises(Exception, match="permission denied to set parameter"):
        migrate_up_to(host_db.dsn, "0002_mpesa_sync_v1")
    # yoyo applied 0001 (no SET clause in it), recorded it in public, and
    # rolled 0002 back whole; this release carries on from there
    status = run_cli("status", "--dsn", host_db.dsn, "--format", "json")
    assert '"history_in_public": true' in status.stdout
    assert run_cli("migrate", "--dsn", host_db.dsn).code == 0
    assert run_cli("status", "--dsn", host_db.dsn).code == 0
    assert host_db.scalar("SELECT to_regclass('public._yoyo_migration')") is None


# -- What an interrupted install leaves --------------------------------------------------


def half_install(db: Database) -> None:
    """What an interrupted run through a transaction pooler left: the first
    migration's objects, and no yoyo record of them."""
    first = (resource_dir("migrations") / "0001_mpesa_sync_base.sql").read_text()
    db.execute(first.replace("SET LOCAL lock_timeout = '5s';", ""))


def test_a_half_finished_install_is_reported_then_repaired(host_db: Database) -> None:
    half_install(host_db)
    status = run_cli("status", "--dsn", host_db.dsn)
    assert status.code == 2
    assert "HALF-INSTALLED" in status.stdout and "interrupted" in status.stdout
    result = run_cli("migrate", "--dsn", host_db.dsn)
    assert result.code == 0, result.stderr
    assert "removed what an interrupted install left" in result.stderr
    assert run_cli("status", "--dsn", host_db.dsn).code == 0
    bar = host_db.add_bar()
    host_db.add_credentials(bar)
    assert host_db.enabled(bar) is True and host_db.drift() == []


def test_a_leftover_holding_events_is_explained_and_kept(host_db: Database) -> None:
    half_install(host_db)
    bar = host_db.add_bar()
    host_db.execute(
        "INSERT INTO mpesa_sync.status_events (bar_id, mpesa_enabled, source)"
        " VALUES (%s, true, 'credentials')",
        (bar,),
    )
    before = describe(host_db.dsn)
    result = run_cli("migrate", "--dsn", host_db.dsn)
    assert result.code == 2
    assert_one_line_error(result.stderr, "holds events or alerts")
    assert describe(host_db.dsn) == before
    assert host_db.scalar("SELECT count(*) FROM mpesa_sync.status_events") == 1


def test_a_session_lock_left_by_an_older_release_is_named(db: Database) -> None:
    """A release before 0006 could leave its session lock on a pooled server
    connection; migrate names the idle session that holds it."""
    holder = psycopg.connect(db.admin_dsn, autocommit=True)
    with holder:
        holder.execute("SELECT pg_advisory_lock(1835100535)")
        pid = holder.info.backend_pid
        done = threading.Event()
        result: list[Any] = []

        def run() -> None:
            result.append(run_cli("migrate", "--dsn", db.dsn))
            done.set()

        thread = threading.Thread(target=run)
        thread.start()
        with db.admin_connect() as admin:
            # wait until migrate waits on the lock, then end the session
            for _ in range(200):
                waiting = admin.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).fetchone()[0]
                if waiting or done.wait(0.05):
                    break
            assert not done.is_set(), "migrate should wait for the lock"
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        thread.join(timeout=60)
    assert result and result[0].code == 0, result
    assert f"pg_terminate_backend({pid})" in result[0].stderr


def test_migrate_holds_nothing_but_its_locks_while_yoyo_works(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction that holds the install locks takes no table lock: one
    would block a migration that alters the table, waiting on yoyo's own
    connection, in a deadlock no server could see."""
    held: list[tuple[str, str]] = []
    apply = migrations._apply

    def looking(dsn: str) -> list[str]:
        with db.admin_connect() as admin:
            held.extend(admin.execute("""
                SELECT l.locktype, l.mode
                FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
                WHERE a.datname = current_database() AND a.state = 'idle in transaction'
            """).fetchall())  # fmt: skip
        return apply(dsn)

    monkeypatch.setattr(migrations, "_apply", looking)
    assert migrations.migrate(db.dsn).applied == []
    assert ("advisory", "ExclusiveLock") in held
    assert {locktype for locktype, _ in held} == {"advisory", "virtualxid"}
