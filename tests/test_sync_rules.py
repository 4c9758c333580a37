"""The rule, each way round: every kind of write leaves bars.mpesa_enabled right."""

from __future__ import annotations

import json

import psycopg
import pytest

from mpesa_sync.resources import resource_dir
from tests.support.database import Database

CUSTOMER_PAYMENT_OPTIONS_SQL = resource_dir("sql") / "optional" / "customer_payment_options.sql"

SECRETS = (b"consumer-key-PLAINTEXT", b"consumer-secret-PLAINTEXT", b"passkey-PLAINTEXT")


def test_new_bar_ends_up_false_despite_host_default_true(db: Database) -> None:
    assert (
        db.scalar(
            "SELECT column_default FROM information_schema.columns "
            "WHERE table_name = 'bars' AND column_name = 'mpesa_enabled'"
        )
        == "true"
    )
    bar = db.add_bar()
    assert db.enabled(bar) is False
    explicit = db.add_bar(mpesa_enabled=True)
    assert db.enabled(explicit) is False


@pytest.mark.parametrize(("active", "expected"), [(True, True), (False, False), (None, False)])
def test_inserting_credentials(db: Database, active: bool | None, expected: bool) -> None:
    bar = db.add_bar()
    db.add_credentials(bar, active=active)
    assert db.enabled(bar) is expected


def test_toggling_is_active_both_ways(db: Database) -> None:
    bar = db.add_bar()
    cred = db.add_credentials(bar, active=False)
    assert db.enabled(bar) is False
    db.execute("UPDATE mpesa_credentials SET is_active = true WHERE id = %s", (cred,))
    assert db.enabled(bar) is True
    db.execute("UPDATE mpesa_credentials SET is_active = NULL WHERE id = %s", (cred,))
    assert db.enabled(bar) is False
    db.execute("UPDATE mpesa_credentials SET is_active = true WHERE id = %s", (cred,))
    db.execute("UPDATE mpesa_credentials SET is_active = false WHERE id = %s", (cred,))
    assert db.enabled(bar) is False


def test_two_rows_one_active_is_enough(db: Database) -> None:
    bar = db.add_bar()
    sandbox = db.add_credentials(bar, "sandbox", active=True)
    production = db.add_credentials(bar, "production", active=True)
    db.execute("UPDATE mpesa_credentials SET is_active = false WHERE id = %s", (sandbox,))
    assert db.enabled(bar) is True
    db.execute("DELETE FROM mpesa_credentials WHERE id = %s", (production,))
    assert db.enabled(bar) is False
    db.execute("DELETE FROM mpesa_credentials WHERE id = %s", (sandbox,))
    assert db.enabled(bar) is False


def test_deleting_the_active_row_turns_it_off(db: Database) -> None:
    bar = db.add_bar()
    cred = db.add_credentials(bar)
    assert db.enabled(bar) is True
    db.execute("DELETE FROM mpesa_credentials WHERE id = %s", (cred,))
    assert db.enabled(bar) is False


def test_truncate_turns_every_bar_off(db: Database) -> None:
    bars = [db.add_bar(f"b{i}") for i in range(3)]
    for bar in bars[:2]:
        db.add_credentials(bar)
    db.execute("TRUNCATE mpesa_credentials")
    assert [db.enabled(bar) for bar in bars] == [False, False, False]
    assert [e["mpesa_enabled"] for e in db.events()][-2:] == [False, False]


def test_row_moving_between_bars_recomputes_both(db: Database) -> None:
    source, target = db.add_bar("source"), db.add_bar("target")
    cred = db.add_credentials(source)
    db.execute("UPDATE mpesa_credentials SET tenant_id = %s WHERE id = %s", (target, cred))
    assert (db.enabled(source), db.enabled(target)) == (False, True)
    db.execute("UPDATE mpesa_credentials SET tenant_id = %s WHERE id = %s", (source, cred))
    assert (db.enabled(source), db.enabled(target)) == (True, False)


def test_multi_bar_statements(db: Database) -> None:
    bars = [db.add_bar(f"b{i}") for i in range(50)]
    with db.connect() as conn:
        conn.cursor().executemany(
            "INSERT INTO mpesa_credentials (tenant_id, environment, business_shortcode,"
            " consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)"
            " VALUES (%s, 'sandbox', '174379', 'k', 's', 'p', %s)",
            [(bar, i % 2 == 0) for i, bar in enumerate(bars)],
        )
    assert [db.enabled(b) for b in bars] == [i % 2 == 0 for i in range(50)]
    db.execute("UPDATE mpesa_credentials SET is_active = NOT coalesce(is_active, false)")
    assert [db.enabled(b) for b in bars] == [i % 2 == 1 for i in range(50)]
    assert db.drift() == []


@pytest.mark.parametrize("wrong", [True, False])
def test_direct_write_of_a_wrong_value_is_corrected(db: Database, wrong: bool) -> None:
    bar = db.add_bar()
    if not wrong:
        db.add_credentials(bar)  # expected true, so writing false is wrong
    before = len(db.events())
    db.execute("UPDATE bars SET mpesa_enabled = %s WHERE id = %s", (wrong, bar))
    assert db.enabled(bar) is (not wrong)
    assert len(db.events()) == before  # corrected back: no real change, no event


def test_direct_write_that_repairs_drift_emits_a_correction_event(db: Database) -> None:
    bar = db.add_bar()
    db.add_credentials(bar)
    db.force_enabled(bar, False)  # drift behind the triggers' back
    db.execute("UPDATE bars SET mpesa_enabled = NULL WHERE id = %s", (bar,))
    assert db.enabled(bar) is True
    last = db.events()[-1]
    assert (last["bar_id"], last["mpesa_enabled"], last["source"]) == (bar, True, "correction")


def test_host_before_trigger_cannot_overwrite_the_correction(db: Database) -> None:
    db.execute("""
        CREATE FUNCTION public.host_forces_true() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.mpesa_enabled := true; RETURN NEW; END $$;
        CREATE TRIGGER a_host_forces_true BEFORE INSERT OR UPDATE ON public.bars
            FOR EACH ROW EXECUTE FUNCTION public.host_forces_true();
    """)
    bar = db.add_bar()
    assert db.enabled(bar) is False
    db.execute("UPDATE bars SET name = 'renamed' WHERE id = %s", (bar,))
    assert db.enabled(bar) is False


@pytest.mark.parametrize("forged", ["0", "1"])
def test_a_session_cannot_pass_its_write_off_as_ours(db: Database, forged: str) -> None:
    """Our own write skips the correction by trigger depth and a setting; a
    session may set the setting, but outside a trigger it is still corrected."""
    bar = db.add_bar()
    db.add_credentials(bar)
    with db.connect() as conn:
        conn.execute("SELECT set_config('mpesa_sync.sync_depth', %s, false)", (forged,))
        conn.execute("UPDATE bars SET mpesa_enabled = false WHERE id = %s", (bar,))
    assert db.enabled(bar) is True
    assert db.drift() == []


def test_a_host_trigger_inside_our_write_is_corrected(db: Database) -> None:
    """A host trigger that fires inside our write of one bar and writes
    another bar runs one trigger level deeper than ours: corrected."""
    synced, other = db.add_bar("synced"), db.add_bar("other")
    db.add_credentials(other)  # other should be true
    db.execute(
        """
        CREATE FUNCTION public.host_writes_other() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE public.bars SET mpesa_enabled = false WHERE name = 'other';
            RETURN NULL;
        END $$;
        CREATE TRIGGER host_writes_other AFTER UPDATE ON public.bars
            FOR EACH ROW WHEN (NEW.name = 'synced')
            EXECUTE FUNCTION public.host_writes_other();
        """
    )
    db.add_credentials(synced)  # our write of "synced" fires the host's trigger
    assert (db.enabled(synced), db.enabled(other)) == (True, True)
    assert db.drift() == []


def test_credentials_written_by_a_host_trigger_sync(db: Database) -> None:
    """A credential write one trigger level down (a host's trigger) syncs as
    any other, labelled as a credential change."""
    bar = db.add_bar()
    credential = db.add_credentials(bar, active=False)
    db.execute(
        """
        CREATE TABLE public.staff_requests (credential uuid, active boolean);
        CREATE FUNCTION public.apply_request() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE public.mpesa_credentials SET is_active = NEW.active WHERE id = NEW.credential;
            RETURN NULL;
        END $$;
        CREATE TRIGGER apply_request AFTER INSERT ON public.staff_requests
            FOR EACH ROW EXECUTE FUNCTION public.apply_request();
        """
    )
    db.execute("INSERT INTO public.staff_requests VALUES (%s, true)", (credential,))
    assert db.enabled(bar) is True
    last = db.events()[-1]
    assert (last["bar_id"], last["mpesa_enabled"], last["source"]) == (bar, True, "credentials")
    assert db.drift() == []


def test_rollback_leaves_both_fields_unchanged(db: Database) -> None:
    bar = db.add_bar()
    cred = db.add_credentials(bar)
    events_before = db.events()
    with db.connect() as listener, db.connect(autocommit=False) as conn:
        listener.execute("LISTEN mpesa_status")
        conn.execute("UPDATE mpesa_credentials SET is_active = false WHERE id = %s", (cred,))
        assert conn.execute("SELECT mpesa_enabled FROM bars WHERE id = %s", (bar,)).fetchone() == (
            False,
        )
        conn.rollback()
        assert list(listener.notifies(timeout=0.3)) == []
    assert db.scalar("SELECT is_active FROM mpesa_credentials WHERE id = %s", (cred,)) is True
    assert db.enabled(bar) is True
    assert db.events() == events_before


def test_notification_only_on_commit_and_only_for_real_changes(db: Database) -> None:
    bar = db.add_bar()
    cred = db.add_credentials(
        bar, active=False, key=SECRETS[0], secret=SECRETS[1], passkey=SECRETS[2]
    )
    with db.connect() as listener, db.connect(autocommit=False) as writer:
        listener.execute("LISTEN mpesa_status")
        writer.execute("UPDATE mpesa_credentials SET is_active = true WHERE id = %s", (cred,))
        assert list(listener.notifies(timeout=0.2)) == []  # not before commit
        writer.commit()
        [note] = list(listener.notifies(timeout=5, stop_after=1))
        payload = json.loads(note.payload)
        assert set(payload) == {"event_id", "bar_id", "mpesa_enabled", "source", "at"}
        assert payload["bar_id"] == str(bar)
        assert payload["mpesa_enabled"] is True
        assert payload["source"] == "credentials"
        assert payload["event_id"] == db.events()[-1]["event_id"]
        for secret in SECRETS:
            assert secret.decode() not in note.payload
            assert secret.hex() not in note.payload

        # No-op writes: same value, other columns, bars' other columns.
        writer.execute("UPDATE mpesa_credentials SET is_active = true WHERE id = %s", (cred,))
        writer.execute(
            "UPDATE mpesa_credentials SET business_shortcode = '600000' WHERE id = %s", (cred,)
        )
        writer.execute("UPDATE bars SET name = 'renamed' WHERE id = %s", (bar,))
        writer.execute("UPDATE bars SET mpesa_enabled = true WHERE id = %s", (bar,))
        writer.commit()
        assert list(listener.notifies(timeout=0.3)) == []
    assert len(db.events()) == 1


def test_event_ids_strictly_increase_in_commit_order(db: Database) -> None:
    bars = [db.add_bar(f"b{i}") for i in range(5)]
    creds = [db.add_credentials(b, active=False) for b in bars]
    for cred in creds:
        db.execute("UPDATE mpesa_credentials SET is_active = true WHERE id = %s", (cred,))
    db.execute("UPDATE mpesa_credentials SET is_active = false")
    events = db.events()
    ids = [e["event_id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == 10
    assert [e["mpesa_enabled"] for e in events] == [True] * 5 + [False] * 5


def test_staff_role_without_rights_on_bars_still_syncs(db: Database) -> None:
    db.execute("""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mpesa_test_staff') THEN
                CREATE ROLE mpesa_test_staff NOLOGIN;
            END IF;
        END $$;
        GRANT mpesa_test_staff TO CURRENT_USER;  -- so that a role that is no superuser may SET ROLE
        GRANT SELECT, INSERT, UPDATE, DELETE ON public.mpesa_credentials TO mpesa_test_staff;
        CREATE POLICY staff_all ON public.mpesa_credentials TO mpesa_test_staff
            USING (true) WITH CHECK (true);
    """)
    bar = db.add_bar()
    with db.connect() as conn:
        conn.execute("SET ROLE mpesa_test_staff")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE bars SET name = 'x'")
        conn.execute(
            "INSERT INTO mpesa_credentials (tenant_id, environment, business_shortcode,"
            " consumer_key_enc, consumer_secret_enc, passkey_enc) VALUES (%s, 'sandbox',"
            " '174379', 'k', 's', 'p')",
            (bar,),
        )
    assert db.enabled(bar) is True


def test_search_path_cannot_hijack_the_functions(db: Database) -> None:
    db.execute("""
        CREATE SCHEMA evil;
        CREATE FUNCTION evil.uuid_hash(uuid) RETURNS integer LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
        CREATE FUNCTION evil.pg_notify(text, text) RETURNS void LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
        CREATE TABLE evil.mpesa_credentials (LIKE public.mpesa_credentials);
        CREATE TABLE evil.bars (LIKE public.bars);
    """)
    bar = db.add_bar()
    with db.connect() as conn:
        conn.execute("SET search_path = evil, pg_catalog, public")
        conn.execute(
            "INSERT INTO public.mpesa_credentials (tenant_id, environment, business_shortcode,"
            " consumer_key_enc, consumer_secret_enc, passkey_enc) VALUES (%s, 'sandbox',"
            " '174379', 'k', 's', 'p')",
            (bar,),
        )
        conn.execute("UPDATE public.bars SET mpesa_enabled = false WHERE id = %s", (bar,))
    assert db.enabled(bar) is True


def test_every_function_is_security_definer_with_pinned_search_path(db: Database) -> None:
    rows = db.query("""
        SELECT p.proname, p.prosecdef, p.proconfig
        FROM pg_proc AS p
        WHERE p.pronamespace = 'mpesa_sync'::regnamespace
    """)
    assert rows
    for row in rows:
        assert row["prosecdef"], row["proname"]
        assert "search_path=pg_catalog, pg_temp" in row["proconfig"], row["proname"]
    assert (
        db.scalar(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'mpesa_sync'::regnamespace"
            " AND has_function_privilege('anon', oid, 'EXECUTE')"
        )
        == 0
    )


def test_payment_options_for_customers(db: Database) -> None:
    usable, empty_key, inactive, none = (db.add_bar(n) for n in ("u", "e", "i", "n"))
    db.add_credentials(usable, "sandbox", shortcode="174379")
    db.add_credentials(usable, "production", shortcode="600126")
    db.add_credentials(empty_key, key=b"")
    db.add_credentials(inactive, active=False)
    read = (
        "SELECT bar_id, mpesa_available, environment, business_shortcode"
        " FROM mpesa_sync.payment_options"
    )
    # Since 0006 the customer roles read nothing of ours until the host opts in.
    for role in ("anon", "authenticated"):
        with db.connect() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SET ROLE {role}")
            conn.execute(read)
    with db.connect() as conn:
        conn.execute(CUSTOMER_PAYMENT_OPTIONS_SQL.read_text())
        conn.execute(CUSTOMER_PAYMENT_OPTIONS_SQL.read_text())  # applying it again is harmless
    for role in ("anon", "authenticated", "service_role"):
        with db.connect() as conn:
            conn.execute(f"SET ROLE {role}")
            rows = {r[0]: r[1:] for r in conn.execute(read)}
            if role != "service_role":  # the staff app's role, which writes them
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("SELECT business_shortcode FROM public.mpesa_credentials")
        assert rows[usable] == (True, "production", "600126"), role
        assert rows[empty_key] == (False, None, None)
        assert rows[inactive] == (False, None, None)
        assert rows[none] == (False, None, None)
    columns = db.query(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'mpesa_sync' AND table_name = 'payment_options'"
    )
    assert {c["column_name"] for c in columns} == {
        "bar_id",
        "mpesa_available",
        "environment",
        "business_shortcode",
    }


def test_repeatable_read_write_skew_becomes_a_serialization_failure(db: Database) -> None:
    bar = db.add_bar()
    sandbox = db.add_credentials(bar, "sandbox")
    production = db.add_credentials(bar, "production")
    first = db.connect(autocommit=False)
    second = db.connect(autocommit=False)
    with first, second:
        for conn in (first, second):
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.execute("SELECT 1 FROM bars")  # take both snapshots now
        first.execute("UPDATE mpesa_credentials SET is_active = false WHERE id = %s", (sandbox,))
        first.commit()
        with pytest.raises(psycopg.errors.SerializationFailure):
            second.execute(
                "UPDATE mpesa_credentials SET is_active = false WHERE id = %s", (production,)
            )
        second.rollback()
        second.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        second.execute(
            "UPDATE mpesa_credentials SET is_active = false WHERE id = %s", (production,)
        )
        second.commit()
    assert db.enabled(bar) is False
    assert db.drift() == []
