"""Broadcast from the database (`mpesa-sync realtime enable`), on real
PostgreSQL with a stand-in of Supabase Realtime's schema
(sql/dev/realtime_standin.sql): what the sink sends and when, its
faults, the RLS policy as Realtime checks it, the state call, and the CLI.

The tests run in the suite's managed-host mode: the sink is enabled, as on
Supabase, by the table owner who is no superuser (``db.dsn``), and Realtime's
schema is made by the superuser, as Supabase's admin makes it
(tests/support/realtime.py); what Realtime itself does (its authorisation
of a join, its WAL reader, a broken Realtime) runs as the superuser.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import errors

from mpesa_sync import migrations, realtime
from tests.support.cli import assert_one_line_error, run_cli
from tests.support.database import Database
from tests.support.realtime import install_standin, messages
from tests.support.relay import set_active

SHORTCODE = "600126"
PAYLOAD_KEYS = {"bar_id", "mpesa_enabled", "event_id", "generation", "at", "id"}


@pytest.fixture
def owner(db: Database) -> str:
    """The DSN of the table owner who is no superuser, on a database with Realtime."""
    assert db.role == "owner"
    install_standin(db)
    return db.dsn


@pytest.fixture
def live(db: Database, owner: str) -> str:
    """The sink enabled (private topics) by ``owner``; returns its DSN."""
    realtime.enable(owner)
    return owner


def bar_with_credentials(db: Database, active: bool = False) -> uuid.UUID:
    bar = db.add_bar("Mama Oliech")
    db.add_credentials(bar, "production", active=active, shortcode=SHORTCODE)
    return bar


def generation(db: Database) -> str:
    return str(db.scalar("SELECT generation FROM mpesa_sync.event_log_v1"))


def sink_objects(db: Database) -> dict[str, Any]:
    """Everything enable makes, as present or not."""
    return db.query(
        """SELECT to_regprocedure('public.mpesa_status(uuid)') IS NOT NULL AS state_call,
                  to_regnamespace('mpesa_sync_live') IS NOT NULL AS live_schema,
                  to_regprocedure('mpesa_sync_live.log_position_v1()') IS NOT NULL AS position,
                  to_regprocedure('mpesa_sync.broadcast_status_events_v1()') IS NOT NULL AS sink,
                  to_regclass('mpesa_sync.realtime_sink_v1') IS NOT NULL AS counters,
                  (SELECT count(*) FROM pg_trigger
                   WHERE tgname = 'mpesa_sync_broadcast_v1') AS triggers,
                  (SELECT count(*) FROM pg_policy
                   WHERE polname LIKE 'mpesa_sync_status_%%') AS policies"""
    )[0]


NOTHING = {
    "state_call": False,
    "live_schema": False,
    "position": False,
    "sink": False,
    "counters": False,
    "triggers": 0,
    "policies": 0,
}


# -- what is sent, and when ---------------------------------------------------------------


def test_a_committed_change_is_sent_once_with_its_event_id(db: Database, live: str) -> None:
    bar = bar_with_credentials(db)
    set_active(db, bar, True)
    ((event_id,),) = [(e["event_id"],) for e in db.events()]
    (message,) = messages(db)
    assert message["topic"] == f"mpesa_status:{bar}"
    assert (message["event"], message["private"], message["extension"]) == (
        "status",
        True,
        "broadcast",
    )
    payload = message["payload"]
    assert set(payload) == PAYLOAD_KEYS  # realtime.send adds "id"
    assert payload["bar_id"] == str(bar)
    assert payload["mpesa_enabled"] is True
    assert payload["event_id"] == event_id
    assert payload["generation"] == generation(db)
    assert SHORTCODE not in json.dumps(payload)


def test_a_rolled_back_change_sends_nothing(db: Database, live: str) -> None:
    bar = bar_with_credentials(db)
    with db.connect(autocommit=False) as conn:
        conn.execute("UPDATE mpesa_credentials SET is_active = true WHERE tenant_id = %s", (bar,))
        assert conn.execute("SELECT mpesa_enabled FROM bars WHERE id = %s", (bar,)).fetchone() == (
            True,
        )
        conn.rollback()
    # a change and its undo in one transaction is no event, and no message
    with db.connect(autocommit=False) as conn:
        conn.execute("UPDATE mpesa_credentials SET is_active = true WHERE tenant_id = %s", (bar,))
        conn.execute("UPDATE mpesa_credentials SET is_active = false WHERE tenant_id = %s", (bar,))
        conn.commit()
    assert messages(db) == [] and db.events() == []
    set_active(db, bar, True)
    assert [m["payload"]["mpesa_enabled"] for m in messages(db)] == [True]


def test_public_topics_and_enable_again(db: Database, owner: str) -> None:
    bar = bar_with_credentials(db)
    assert realtime.enable(owner, public=True).topics == "public"
    set_active(db, bar, True)
    assert realtime.enable(owner).topics == "private"  # again: replaced, not doubled
    set_active(db, bar, False)
    assert [(m["private"], m["payload"]["mpesa_enabled"]) for m in messages(db)] == [
        (False, True),
        (True, False),
    ]


def test_commit_order_in_the_wal_is_event_id_order_under_concurrent_writers(
    db: Database, live: str
) -> None:
    """Realtime reads realtime.messages inserts from the WAL after commit:
    decoded with test_decoding, the messages of committed events come in
    event id order, each exactly once, and a rolled-back writer's never."""
    if db.scalar("SHOW wal_level") != "logical":
        pytest.fail("this server runs without wal_level = logical (tests/support/servers.py)")
    bars = [bar_with_credentials(db) for _ in range(6)]
    slot = f"mpesa_{uuid.uuid4().hex[:8]}"
    admin = db.admin_connect()  # Realtime's WAL reader: a replication slot needs the right
    admin.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (slot,))
    try:
        failures: list[BaseException] = []

        def writer(mine: list[uuid.UUID], rounds: int, roll_back: bool) -> None:
            try:
                with db.connect(autocommit=False) as conn:
                    for _ in range(rounds):
                        for bar in mine:
                            conn.execute(
                                "UPDATE mpesa_credentials SET is_active = NOT is_active"
                                " WHERE tenant_id = %s",
                                (bar,),
                            )
                        conn.rollback() if roll_back else conn.commit()
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)

        threads = [
            threading.Thread(target=writer, args=(bars[0:2], 15, False)),
            threading.Thread(target=writer, args=(bars[1:4], 15, False)),
            threading.Thread(target=writer, args=(bars[3:6], 15, False)),
            threading.Thread(target=writer, args=(bars, 10, True)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures
        # The slot decodes only flushed WAL, and the suite's clusters commit
        # with synchronous_commit off: one durable commit that writes WAL (a
        # logical message) flushes all before it.
        admin.execute("SET synchronous_commit = on")
        admin.execute("SELECT pg_logical_emit_message(true, 'mpesa_sync_test', 'flush')")
        changes = admin.execute(
            "SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL,"
            " 'include-xids', '0', 'skip-empty-xacts', '1')",
            (slot,),
        ).fetchall()
    finally:
        admin.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        admin.close()

    inserted = re.compile(r"^table realtime\.messages_\w+: INSERT: .*payload\[jsonb\]:'(.*?)' ")
    decoded = [
        json.loads(match.group(1).replace("''", "'"))
        for (data,) in changes
        if (match := inserted.match(data))
    ]
    events = db.events()
    assert len(events) > 0
    assert [p["event_id"] for p in decoded] == [e["event_id"] for e in events]
    assert [(p["bar_id"], p["mpesa_enabled"]) for p in decoded] == [
        (str(e["bar_id"]), e["mpesa_enabled"]) for e in events
    ]
    for bar in bars:  # and so, per bar, the value it ends with
        mine = [p["mpesa_enabled"] for p in decoded if p["bar_id"] == str(bar)]
        assert mine[-1] == db.enabled(bar)


# -- faults: a broken sink never fails the write ---------------------------------------


def test_a_send_that_raises_fails_no_write_and_raises_one_alert(db: Database, live: str) -> None:
    bar = bar_with_credentials(db)
    with db.admin_connect() as admin:  # Realtime is its admin's to break
        admin.execute(
            """CREATE OR REPLACE FUNCTION realtime.send(payload jsonb, event text, topic text,
                                                      private boolean DEFAULT true)
              RETURNS void LANGUAGE plpgsql AS $$
              BEGIN RAISE EXCEPTION 'realtime is down' USING ERRCODE = 'XX000'; END $$"""
        )
    set_active(db, bar, True)
    set_active(db, bar, False)
    assert db.enabled(bar) is False and db.drift() == []
    assert [e["mpesa_enabled"] for e in db.events()] == [True, False]
    assert messages(db) == []
    (alert,) = db.query("SELECT kind, bar_id, detail FROM mpesa_sync.alerts")
    assert alert == {
        "kind": "realtime_send_failed",
        "bar_id": None,
        "detail": {"sqlstate": "XX000", "error": "realtime is down", "events": 1},
    }
    with db.connect() as conn:
        sink = realtime.sink_status(conn)
    assert (sink.enabled, sink.failures, sink.events_lost, sink.last_sqlstate) == (
        True,
        2,
        2,
        "XX000",
    )
    text = run_cli("status", "--dsn", db.dsn)
    assert text.code == 1  # the open alert
    assert "realtime broadcast: on (private topics), 2 failed send(s)" in text.stdout
    # acknowledged, the next failure raises a new alert
    assert run_cli("alerts", "ack", "1", "--dsn", db.dsn).code == 0
    set_active(db, bar, True)
    assert db.scalar("SELECT count(*) FROM mpesa_sync.alerts WHERE acknowledged_at IS NULL") == 1


def test_a_missing_realtime_schema_fails_no_write(db: Database, live: str) -> None:
    bar = bar_with_credentials(db)
    with db.admin_connect() as admin:
        admin.execute("DROP SCHEMA realtime CASCADE")
    set_active(db, bar, True)
    assert db.enabled(bar) is True and db.drift() == []
    assert [e["mpesa_enabled"] for e in db.events()] == [True]
    (detail,) = [r["detail"] for r in db.query("SELECT detail FROM mpesa_sync.alerts")]
    assert detail["sqlstate"] == "3F000"  # invalid_schema_name
    # and disable still works without it
    assert realtime.disable(live) is True
    assert sink_objects(db) == NOTHING


# -- who may receive: as Realtime authorises a join -------------------------------------


def can_receive(
    db: Database,
    role: str,
    topic: str,
    *,
    row_topic: str | None = None,
    extension: str = "broadcast",
) -> bool:
    """Realtime's read check for a private channel: as its superuser, insert
    a row for the topic; then, as the subscriber's role with realtime.topic
    and the JWT claims set, select it back; roll back."""
    with db.admin_connect(autocommit=False) as conn:
        row_id = conn.execute(
            "INSERT INTO realtime.messages (topic, extension) VALUES (%s, %s) RETURNING id",
            (row_topic or topic, extension),
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "SELECT set_config('role', %s, true), set_config('realtime.topic', %s, true),"
            " set_config('request.jwt.claims', %s, true),"
            " set_config('request.jwt.claim.role', %s, true)",
            (role, topic, json.dumps({"role": role}), role),
        )
        seen = conn.execute("SELECT id FROM realtime.messages WHERE id = %s", (row_id,)).fetchall()
        conn.rollback()
    return bool(seen)


def can_send(db: Database, role: str, topic: str) -> bool:
    """Realtime's write check: insert as the role, in a savepoint."""
    with db.admin_connect(autocommit=False) as conn:
        conn.execute(
            "SELECT set_config('role', %s, true), set_config('realtime.topic', %s, true)",
            (role, topic),
        )
        try:
            conn.execute(
                "INSERT INTO realtime.messages (topic, extension) VALUES (%s, 'broadcast')",
                (topic,),
            )
        except errors.InsufficientPrivilege:
            return False
        finally:
            conn.rollback()
    return True


@pytest.mark.parametrize("api_role", ["anon", "authenticated"])
def test_customers_receive_mpesa_status_topics_and_nothing_else(
    db: Database, live: str, api_role: str
) -> None:
    ours = f"mpesa_status:{uuid.uuid4()}"
    assert can_receive(db, api_role, ours)
    assert not can_receive(db, api_role, ours, extension="presence")
    assert not can_receive(db, api_role, "orders:1")
    assert not can_receive(db, api_role, "mpesa-status:1")  # an underscore is no wildcard
    assert not can_receive(db, api_role, "xmpesa_status:1")
    assert not can_receive(db, api_role, ours, row_topic=f"mpesa_status:{uuid.uuid4()}")
    assert not can_send(db, api_role, ours)
    # what the sink sent is what a subscriber of that topic may read
    bar = bar_with_credentials(db)
    set_active(db, bar, True)
    with db.admin_connect(autocommit=False) as conn:
        conn.execute(
            "SELECT set_config('role', %s, true), set_config('realtime.topic', %s, true)",
            (api_role, f"mpesa_status:{bar}"),
        )
        rows = conn.execute("SELECT payload FROM realtime.messages").fetchall()
    assert [r[0]["bar_id"] for r in rows] == [str(bar)]
    realtime.disable(live)
    assert not can_receive(db, api_role, ours)


# -- the state call ----------------------------------------------------------------------


def as_anon(db: Database, statement: str, params: Any = None) -> Any:
    with db.connect(autocommit=False) as conn:
        conn.execute("SET LOCAL ROLE anon")
        row = conn.execute(statement, params).fetchone()
        conn.rollback()
    return row[0] if row else None


def test_the_state_call_as_anon(db: Database, live: str) -> None:
    bar = bar_with_credentials(db)
    other = bar_with_credentials(db)
    set_active(db, bar, True)
    set_active(db, other, True)
    set_active(db, other, False)
    state = as_anon(db, "SELECT public.mpesa_status(%s)", (bar,))
    newest = max(e["event_id"] for e in db.events())
    assert state == {
        "bar_id": str(bar),
        "mpesa_enabled": True,
        "card_enabled": False,
        "cash_enabled": True,
        "generation": generation(db),
        "event_id": newest,  # every event up to it is reflected, the bar's own included
    }
    assert SHORTCODE not in json.dumps(state)
    assert as_anon(db, "SELECT public.mpesa_status(%s)", (uuid.uuid4(),)) is None
    # nothing else of ours opens to anon
    for statement in (
        "SELECT * FROM mpesa_sync.event_log_v1",
        "SELECT * FROM mpesa_sync.realtime_sink_v1",
        "SELECT mpesa_sync.realtime_send_failed_v1('x', 'y', 1)",
    ):
        with pytest.raises(errors.InsufficientPrivilege):
            as_anon(db, statement)


def test_the_state_call_reads_bars_with_the_callers_rights(db: Database, live: str) -> None:
    """SECURITY INVOKER: a caller that may not read bars gets an error, not
    the bar; the host's RLS on bars decides which bars it sees."""
    bar = bar_with_credentials(db)
    db.execute("REVOKE SELECT ON public.bars FROM anon")
    with pytest.raises(errors.InsufficientPrivilege):
        as_anon(db, "SELECT public.mpesa_status(%s)", (bar,))
    db.execute("GRANT SELECT ON public.bars TO anon")  # as the host has it, with RLS on
    db.execute(
        "CREATE POLICY only_one ON public.bars AS RESTRICTIVE FOR SELECT TO anon"
        " USING (name = 'shown')"
    )
    shown = db.add_bar("shown")
    assert as_anon(db, "SELECT public.mpesa_status(%s)", (bar,)) is None
    assert as_anon(db, "SELECT public.mpesa_status(%s)", (shown,))["bar_id"] == str(shown)


def test_no_security_definer_function_is_exposed_and_every_one_pins_its_search_path(
    db: Database, live: str
) -> None:
    """What Supabase's linter checks (splinter 0011, 0028, 0029): our
    functions in the API's schema (public) are SECURITY INVOKER, the one the
    customer roles may call with its owner's rights is alone in a schema of
    its own, and every function enable makes has a fixed search_path
    (tests/test_managed_host.py runs the lints themselves)."""
    rows = db.query(
        """SELECT n.nspname, p.proname, p.prosecdef,
                  coalesce(array_to_string(p.proconfig, ','), '') LIKE '%%search_path=%%' AS pinned
           FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
           WHERE p.oid IN ('public.mpesa_status(uuid)'::regprocedure,
                           'mpesa_sync_live.log_position_v1()'::regprocedure,
                           'mpesa_sync.broadcast_status_events_v1()'::regprocedure,
                           'mpesa_sync.realtime_send_failed_v1(text, text, bigint)'::regprocedure)
           ORDER BY 1, 2"""
    )
    assert all(r["pinned"] for r in rows)
    assert [(r["nspname"], r["proname"]) for r in rows if r["prosecdef"]] == [
        ("mpesa_sync", "broadcast_status_events_v1"),
        ("mpesa_sync", "realtime_send_failed_v1"),
        ("mpesa_sync_live", "log_position_v1"),
    ]
    assert [r["prosecdef"] for r in rows if r["nspname"] == "public"] == [False]
    assert db.query(
        """SELECT c.relname FROM pg_class AS c
           WHERE c.relnamespace = 'mpesa_sync_live'::regnamespace
           UNION ALL
           SELECT p.proname FROM pg_proc AS p
           WHERE p.pronamespace = 'mpesa_sync_live'::regnamespace"""
    ) == [{"relname": "log_position_v1"}]
    for api_role in ("anon", "authenticated"):
        assert not db.scalar("SELECT has_schema_privilege(%s, 'mpesa_sync', 'USAGE')", (api_role,))
        assert db.scalar(
            "SELECT has_function_privilege(%s, 'mpesa_sync_live.log_position_v1()', 'EXECUTE')",
            (api_role,),
        )


# -- the commands --------------------------------------------------------------------------


def test_enable_and_disable_from_the_command_line(db: Database, owner: str) -> None:
    on = run_cli("realtime", "enable", "--dsn", owner)
    assert on.code == 0, on.stderr
    assert on.stdout.startswith("realtime broadcast: on (private topics")
    assert run_cli("realtime", "enable", "--dsn", owner).code == 0
    assert sink_objects(db) == {
        "state_call": True,
        "live_schema": True,
        "position": True,
        "sink": True,
        "counters": True,
        "triggers": 1,
        "policies": 2,
    }
    status = json.loads(run_cli("status", "--dsn", db.dsn, "--format", "json").stdout)
    assert status["realtime"]["enabled"] is True and status["realtime"]["topics"] == "private"
    off = run_cli("realtime", "disable", "--dsn", owner)
    assert (off.code, off.stdout.strip()) == (0, "realtime broadcast: off")
    again = run_cli("realtime", "disable", "--dsn", owner)
    assert (again.code, again.stdout.strip()) == (0, "realtime broadcast: off (it was not on)")
    assert sink_objects(db) == NOTHING
    assert "realtime broadcast: off" in run_cli("status", "--dsn", db.dsn).stdout


def test_enable_without_realtime_changes_nothing(db: Database) -> None:
    result = run_cli("realtime", "enable", "--dsn", db.dsn)
    assert result.code == 2
    assert_one_line_error(result.stderr, "no realtime schema")
    install_standin(db)
    with db.admin_connect() as admin:
        admin.execute("DROP FUNCTION realtime.send(jsonb, text, text, boolean)")
    result = run_cli("realtime", "enable", "--dsn", db.dsn)
    assert result.code == 2
    assert_one_line_error(result.stderr, "no realtime.send(jsonb, text, text, boolean)")
    assert sink_objects(db) == NOTHING


@pytest.mark.parametrize(
    ("insert_right", "needle"),
    [
        (True, "may not create policies on realtime.messages"),
        (False, "lacks INSERT on realtime.messages"),
    ],
)
def test_enable_names_a_missing_right_and_changes_nothing(
    db: Database, owner: str, insert_right: bool, needle: str
) -> None:
    """A Realtime whose messages table belongs to a role the owner is not a
    member of (Supabase with supautils' policy grants, here without them, so
    no policy may be made), and that may also grant the owner no INSERT
    there (not through anon, authenticated or service_role either)."""
    with db.admin_connect() as admin:
        admin.execute("ALTER TABLE realtime.messages OWNER TO CURRENT_USER")
        if not insert_right:
            admin.execute(
                "REVOKE INSERT ON realtime.messages FROM anon, authenticated, service_role"
            )
    reach = db.query(
        """SELECT pg_has_role('supabase_realtime_admin', 'MEMBER') AS member,
                  has_table_privilege('realtime.messages', 'INSERT') AS insert"""
    )
    assert reach == [{"member": True, "insert": insert_right}]  # the owner of send, not messages
    result = run_cli("realtime", "enable", "--dsn", owner)
    assert result.code == 2
    assert_one_line_error(result.stderr, needle)
    assert sink_objects(db) == NOTHING


def test_enable_refuses_a_live_schema_of_another_role(db: Database, owner: str) -> None:
    """mpesa_sync_live holds a function that runs with the owner's rights:
    enable puts it in no schema another role made."""
    with db.admin_connect() as admin:
        admin.execute("CREATE SCHEMA mpesa_sync_live")
        admin.execute("GRANT CREATE, USAGE ON SCHEMA mpesa_sync_live TO PUBLIC")
    result = run_cli("realtime", "enable", "--dsn", owner)
    assert result.code == 2
    assert_one_line_error(result.stderr, "may not use schema mpesa_sync_live")
    assert {**sink_objects(db), "live_schema": False} == NOTHING
    # nor does disable (or rollback) take it away, or fail on it
    assert run_cli("realtime", "disable", "--dsn", owner).code == 0
    assert sink_objects(db)["live_schema"] is True


def test_rollback_all_removes_everything_enable_added(db: Database, live: str) -> None:
    migrations.rollback(db.dsn, count=None)
    assert db.query(
        """SELECT to_regprocedure('public.mpesa_status(uuid)') AS state_call,
                  to_regnamespace('mpesa_sync') AS schema,
                  to_regnamespace('mpesa_sync_live') AS live_schema,
                  (SELECT count(*) FROM pg_policy WHERE polname LIKE 'mpesa_sync%%') AS policies"""
    ) == [{"state_call": None, "schema": None, "live_schema": None, "policies": 0}]
    migrations.migrate(db.dsn)
    bar = bar_with_credentials(db)
    set_active(db, bar, True)
    assert db.enabled(bar) is True and messages(db) == []


def test_a_database_without_realtime_runs_as_before(db: Database) -> None:
    bar = bar_with_credentials(db)
    set_active(db, bar, True)
    with db.connect() as conn:
        assert realtime.sink_status(conn) == realtime.RealtimeStatus(False, None, 0, False)
    assert realtime.disable(db.dsn) is False
    with pytest.raises(psycopg.errors.UndefinedTable):
        db.execute("SELECT 1 FROM realtime.messages")


def test_the_sink_state_reads_without_rights_on_realtime(db: Database, live: str) -> None:
    """status asks about the policies from the catalogs: a role without USAGE
    on schema realtime (a monitor) can still read the sink's state."""
    monitor = f"mpesa_monitor_{uuid.uuid4().hex[:10]}"
    admin = db.admin_connect()  # a cluster-wide role, made and dropped by the admin
    admin.execute(f"CREATE ROLE {monitor}")
    try:
        admin.execute(f"GRANT USAGE ON SCHEMA mpesa_sync TO {monitor}")
        admin.execute(f"GRANT SELECT ON mpesa_sync.realtime_sink_v1 TO {monitor}")
        with db.admin_connect(autocommit=False) as conn:
            conn.execute(f"SET LOCAL ROLE {monitor}")
            with pytest.raises(errors.InsufficientPrivilege), conn.transaction():
                conn.execute("SELECT to_regclass('realtime.messages')")
            sink = realtime.sink_status(conn)
            conn.rollback()
        assert (sink.enabled, sink.topics, sink.policies, sink.state_call) == (
            True,
            "private",
            2,
            True,
        )
    finally:
        admin.execute(f"DROP OWNED BY {monitor}")
        admin.execute(f"DROP ROLE {monitor}")
        admin.close()
