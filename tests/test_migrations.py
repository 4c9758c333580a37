"""Installing, re-installing and removing mpesa-sync on live-shaped databases."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mpesa_sync import migrations
from mpesa_sync.errors import HostSchemaMissing
from mpesa_sync.resources import resource_dir
from tests.support.catalog import describe, table_data
from tests.support.cli import assert_one_line_error, run_cli, run_module
from tests.support.database import Database, fresh_database, templates
from tests.support.relay import RelayProcess
from tests.support.waiting import wait_for

# The install, upgrade, rollback, settings, relay and prune tests run as the
# managed-host owner (no superuser) and as a superuser.
pytestmark = pytest.mark.roles("owner", "superuser")

ROOT = Path(__file__).resolve().parent.parent
ALL_MIGRATIONS = sorted(
    p.stem for p in resource_dir("migrations").glob("*.sql") if not p.stem.endswith(".rollback")
)


def test_schema_sql_and_migrations_build_the_same_schema(server, host_db: Database) -> None:
    from_migrations = host_db
    migrations.migrate(from_migrations.dsn)
    with fresh_database(
        server, templates(host_db.role)[0], prefix="from_schema", role=host_db.role
    ) as from_schema:
        from_schema.execute(resource_dir("sql").joinpath("schema.sql").read_text())
        assert describe(from_schema.dsn) == describe(from_migrations.dsn)


def test_second_migrate_is_a_noop(host_db: Database) -> None:
    first = migrations.migrate(host_db.dsn)
    assert first.applied == ALL_MIGRATIONS
    before = describe(host_db.dsn)
    assert migrations.migrate(host_db.dsn).applied == []
    assert describe(host_db.dsn) == before


def test_concurrent_migrates_are_serialised(host_db: Database) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def run() -> None:
        barrier.wait()
        try:
            results.append(migrations.migrate(host_db.dsn).applied)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results, key=len) == [[], [], ALL_MIGRATIONS]


def test_full_rollback_restores_the_host_exactly(host_db: Database) -> None:
    bar = host_db.add_bar("kept", mpesa_enabled=False)
    host_db.add_credentials(bar, active=False)
    schema_before, data_before = describe(host_db.dsn), table_data(host_db.dsn)
    migrations.migrate(host_db.dsn)
    assert describe(host_db.dsn) != schema_before
    for migration in reversed(ALL_MIGRATIONS):  # one at a time, newest first
        assert migrations.rollback(host_db.dsn) == [migration]
    assert describe(host_db.dsn) == schema_before
    assert table_data(host_db.dsn) == data_before


def test_yoyo_cli_applies_and_rolls_back(host_db: Database) -> None:
    yoyo = str(Path(sys.executable).with_name("yoyo"))
    url = migrations.yoyo_url(host_db.dsn)
    assert url.startswith("postgresql+psycopg://")
    assert url.endswith("schema=mpesa_sync_yoyo")  # yoyo's tables out of public
    before = describe(host_db.dsn)
    folder = str(resource_dir("migrations"))
    # docs/install.md: the DBA creates the schema yoyo keeps its tables in
    host_db.execute("CREATE SCHEMA IF NOT EXISTS mpesa_sync_yoyo")
    subprocess.run(
        [yoyo, "apply", "-b", "--no-config-file", "-d", url, folder],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert host_db.scalar("SELECT to_regprocedure('mpesa_sync.fix_bars_v2(uuid[])') IS NOT NULL")
    assert host_db.scalar("SELECT to_regclass('public._yoyo_migration')") is None
    subprocess.run(
        [yoyo, "rollback", "-b", "--all", "--no-config-file", "-d", url, folder],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert describe(host_db.dsn) == before


def test_install_adds_a_missing_column_and_rollback_drops_it(host_db: Database) -> None:
    host_db.execute("ALTER TABLE bars DROP COLUMN mpesa_enabled")
    bar = host_db.add_bar()
    host_db.add_credentials(bar)
    before = describe(host_db.dsn)
    migrations.migrate(host_db.dsn)
    assert host_db.enabled(bar) is True
    migrations.rollback(host_db.dsn, count=None)
    assert describe(host_db.dsn) == before


def test_install_fixes_existing_drift_including_nulls(host_db: Database) -> None:
    on = host_db.add_bar("on", mpesa_enabled=False)
    host_db.add_credentials(on)
    off = host_db.add_bar("off", mpesa_enabled=True)
    null = host_db.add_bar("null", mpesa_enabled=None)
    fine = host_db.add_bar("fine", mpesa_enabled=False)
    report = migrations.migrate(host_db.dsn)
    assert report.fixed == 3 and report.as_dict()["fixed"] == 3
    assert [host_db.enabled(b) for b in (on, off, null, fine)] == [True, False, False, False]
    events = host_db.events()
    assert {(e["bar_id"], e["mpesa_enabled"], e["source"]) for e in events} == {
        (on, True, "reconcile"),
        (off, False, "reconcile"),
        (null, False, "reconcile"),
    }


def test_bars_that_refuse_do_not_stop_the_install(host_db: Database) -> None:
    ok = host_db.add_bar("ok", mpesa_enabled=False)
    host_db.add_credentials(ok)
    checked = host_db.add_bar("checked", mpesa_enabled=False)
    host_db.add_credentials(checked)
    guarded = host_db.add_bar("guarded", mpesa_enabled=True)
    locked = host_db.add_bar("locked", mpesa_enabled=True)
    host_db.execute("""
        ALTER TABLE bars ADD CONSTRAINT host_no_mpesa_for_checked
            CHECK (name <> 'checked' OR mpesa_enabled IS NOT TRUE) NOT VALID;
        CREATE FUNCTION public.host_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.name = 'guarded' THEN RAISE EXCEPTION 'guarded bar is frozen'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER host_guard BEFORE UPDATE ON bars FOR EACH ROW
            EXECUTE FUNCTION public.host_guard();
    """)
    # A transaction holds one bar's row lock while 0002's install-time fix
    # runs, and lets go only when 0004 asks for the lock that replacing a
    # trigger on bars needs: the fix has given up on that bar by then.
    holder = host_db.connect(autocommit=False)
    holder.execute("SELECT 1 FROM bars WHERE id = %s FOR UPDATE", (locked,))

    def release_when_0004_waits() -> None:
        wait_for("0004 to wait for bars", lambda: host_db.awaits_exclusive_lock("public.bars"), 60)
        holder.rollback()

    releaser = threading.Thread(target=release_when_0004_waits)
    releaser.start()
    try:
        report = migrations.migrate(host_db.dsn)
    finally:
        releaser.join()
        holder.close()
    assert host_db.enabled(ok) is True
    assert [host_db.enabled(b) for b in (checked, guarded, locked)] == [False, True, True]
    refused = {r["bar_id"]: r for r in report.refused}
    assert set(refused) == {str(checked), str(guarded), str(locked)}
    assert refused[str(checked)]["sqlstate"] == "23514"
    assert refused[str(checked)]["constraint"] == "host_no_mpesa_for_checked"
    assert refused[str(guarded)]["error"] == "guarded bar is frozen"
    assert refused[str(locked)]["sqlstate"] == "55P03"
    alerts = host_db.query("SELECT kind, bar_id FROM mpesa_sync.alerts ORDER BY id")
    assert {(a["kind"], a["bar_id"]) for a in alerts} == {
        ("fix_refused", checked),
        ("fix_refused", guarded),
        ("fix_refused", locked),
    }


def test_migrate_cli_reports_refused_bars_with_exit_1(host_db: Database) -> None:
    host_db.add_bar("checked", mpesa_enabled=True)
    host_db.execute("""ALTER TABLE bars ADD CONSTRAINT host_keep_on
                       CHECK (mpesa_enabled IS NOT FALSE) NOT VALID""")
    result = run_module("migrate", "--dsn", host_db.dsn)
    assert result.returncode == 1, result.stderr
    assert "refused its status fix" in result.stderr
    assert "Traceback" not in result.stderr


def test_empty_database_is_refused_without_create_tables(empty_db: Database) -> None:
    result = run_module("migrate", "--dsn", empty_db.dsn)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "has no table public.bars")
    assert "--create-tables" in result.stderr
    assert empty_db.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    assert empty_db.scalar("SELECT to_regnamespace('mpesa_sync')") is None
    with pytest.raises(HostSchemaMissing):
        migrations.migrate(empty_db.dsn)


def test_create_tables_installs_on_a_new_database(empty_db: Database) -> None:
    result = run_module("migrate", "--dsn", empty_db.dsn, "--create-tables")
    assert result.returncode == 0, result.stderr
    bar = empty_db.add_bar()
    empty_db.add_credentials(bar)
    assert empty_db.enabled(bar) is True
    assert (
        empty_db.scalar(
            "SELECT relrowsecurity FROM pg_class WHERE oid = 'public.mpesa_credentials'::regclass"
        )
        is True
    )
    empty_db.execute("DELETE FROM bars")
    migrations.rollback(empty_db.dsn, count=None)
    assert (
        empty_db.scalar(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename IN ('bars', 'mpesa_credentials')"
        )
        == 0
    )


def test_rollback_keeps_created_tables_that_hold_data(empty_db: Database) -> None:
    migrations.migrate(empty_db.dsn, create_tables=True)
    bar = empty_db.add_bar("precious")
    migrations.rollback(empty_db.dsn, count=None)
    assert empty_db.scalar("SELECT name FROM bars WHERE id = %s", (bar,)) == "precious"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["migrate", "--dsn", "postgresql://nobody@127.0.0.1:1/nowhere"], "cannot connect"),
        (["migrate", "--dsn", "not a dsn ==="], "invalid DSN"),
        (["migrate"], "pass --dsn or set MPESA_SYNC_DSN"),
        (["migrate", "--dsn", "x", "--bogus"], "No such option"),
        (["rollback", "--dsn", "x", "--steps", "0"], "--steps"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MPESA_SYNC_DSN"}
    result = run_module(*args, env=env)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, needle)


def test_dsn_comes_from_the_environment(host_db: Database) -> None:
    env = {**os.environ, "MPESA_SYNC_DSN": host_db.dsn}
    result = run_module("migrate", env=env)
    assert result.returncode == 0, result.stderr
    assert f"applied {len(ALL_MIGRATIONS)} migration(s)" in result.stdout


def test_password_never_in_errors() -> None:
    result = run_module("migrate", "--dsn", "postgresql://me:hunter2secret@127.0.0.1:1/db")
    assert result.returncode == 2
    assert "hunter2secret" not in result.stderr + result.stdout


def test_migrate_says_what_the_install_fixed(host_db: Database) -> None:
    for i in range(15):
        host_db.add_bar(f"drifted {i}", mpesa_enabled=True)  # no credentials: should be false
    result = run_module("migrate", "--dsn", host_db.dsn)
    assert result.returncode == 0, result.stderr
    assert "fixed 15 bar(s) that had drifted" in result.stdout
    migrations.rollback(host_db.dsn, count=None)
    host_db.execute("UPDATE bars SET mpesa_enabled = true")  # drift again, nothing installed
    result = run_module("migrate", "--dsn", host_db.dsn, "--format", "json")
    assert json.loads(result.stdout)["fixed"] == 15
    assert json.loads(run_module("migrate", "--dsn", host_db.dsn, "--format", "json").stdout) == {
        "applied": [],
        "fixed": 0,
        "refused": [],
    }


def test_migrate_refuses_a_host_without_the_columns_it_needs(host_db: Database) -> None:
    host_db.execute("""
        ALTER TABLE mpesa_credentials DROP COLUMN is_active;
        ALTER TABLE mpesa_credentials ALTER COLUMN passkey_enc TYPE text USING 'x';
    """)
    before = describe(host_db.dsn, skip_yoyo=False)
    result = run_module("migrate", "--dsn", host_db.dsn)
    assert result.returncode == 2
    assert_one_line_error(
        result.stderr,
        "lack what mpesa-sync reads or writes: public.mpesa_credentials.passkey_enc (bytea), "
        "public.mpesa_credentials.is_active (boolean)",
    )
    assert describe(host_db.dsn, skip_yoyo=False) == before  # nothing, not even yoyo's tables


def test_rollback_of_a_database_without_an_install_is_exit_2_and_creates_nothing(
    host_db: Database, empty_db: Database
) -> None:
    for target, needle in ((host_db, "no schema mpesa_sync"), (empty_db, "no schema mpesa_sync")):
        before = describe(target.dsn, skip_yoyo=False)
        for args in (["rollback"], ["rollback", "--all"]):
            result = run_module(*args, "--dsn", target.dsn)
            assert result.returncode == 2
            assert_one_line_error(result.stderr, needle)
            assert "is this the right database?" in result.stderr
        assert describe(target.dsn, skip_yoyo=False) == before
    # The schema without yoyo's record of it (made from schema.sql, say): refused too.
    host_db.execute(resource_dir("sql").joinpath("schema.sql").read_text())
    result = run_module("rollback", "--dsn", host_db.dsn)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "no yoyo history of it")
    assert host_db.scalar("SELECT to_regclass('_yoyo_migration')") is None


MINIMAL_HOST = """
    CREATE TABLE public.bars (id uuid PRIMARY KEY DEFAULT gen_random_uuid());
    CREATE TABLE public.mpesa_credentials (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id uuid NOT NULL REFERENCES public.bars (id),
        environment varchar(10) NOT NULL,
        business_shortcode varchar(7) NOT NULL,
        consumer_key_enc bytea NOT NULL,
        consumer_secret_enc bytea NOT NULL,
        passkey_enc bytea NOT NULL,
        is_active boolean,
        UNIQUE (tenant_id, environment)
    );
"""


def test_every_command_works_on_the_smallest_host_migrate_accepts(empty_db: Database) -> None:
    """Only the columns docs/install.md lists (no name, no created_at or
    updated_at, no mpesa_enabled yet, varchar for text): migrate accepts it,
    and then every command runs on it."""
    empty_db.execute(MINIMAL_HOST)
    dsn = empty_db.dsn
    assert run_cli("migrate", "--dsn", dsn).code == 0
    bar = empty_db.scalar("INSERT INTO bars DEFAULT VALUES RETURNING id")
    key = base64.b64encode(bytes(32)).decode()
    secrets = {
        "MPESA_SYNC_ENCRYPTION_KEY": key,
        "MPESA_SYNC_CONSUMER_KEY": "k",
        "MPESA_SYNC_CONSUMER_SECRET": "s",
        "MPESA_SYNC_PASSKEY": "p",
    }
    runs = [
        (
            [
                "settings",
                "set",
                "--bar",
                str(bar),
                "--environment",
                "sandbox",
                "--shortcode",
                "174379",
                "--active",
            ],
            0,
        ),
        (["settings", "show", "--bar", str(bar), "--format", "json"], 0),
        (["settings", "show", "--bar", str(bar)], 0),
        (["verify"], 0),
        (["reconcile"], 0),
        (["alerts", "--all"], 0),
        (["status"], 0),
        (["prune", "--older-than", "1d"], 0),
        (["migrate"], 0),
    ]
    for args, code in runs:
        result = run_cli(*args, "--dsn", dsn, env=secrets)
        assert result.code == code, f"{args}: {result.stderr}"
        assert result.stderr == "" or "error" not in result.stderr.lower(), result.stderr
    shown = json.loads(
        run_cli("settings", "show", "--bar", str(bar), "--dsn", dsn, "--format", "json").stdout
    )
    assert shown["mpesa_enabled"] is True
    assert shown["credentials"][0]["updated_at"] is None  # the host has no such column
    check = run_cli(
        "settings",
        "check",
        "--bar",
        str(bar),
        "--dsn",
        dsn,
        "--daraja-url",
        "http://127.0.0.1:1",
        env=secrets,
    )
    assert check.code == 2
    assert_one_line_error(check.stderr, "cannot reach Daraja")  # it got past the database
    with RelayProcess(dsn, "--since", "0") as relay:
        (event,) = relay.events(1)
        assert event["bar_id"] == str(bar) and event["mpesa_enabled"] is True
        relay.stop()
    assert run_cli("rollback", "--all", "--dsn", dsn).code == 0
