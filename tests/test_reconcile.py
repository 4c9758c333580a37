"""`mpesa-sync reconcile`: fixes drift in batches through fix_bars_v2, reports
what refuses, re-checks, and is safe beside live writes and other reconciles."""

from __future__ import annotations

import json
import random
import threading
import uuid
from typing import Any

import pytest

from mpesa_sync import reconciliation
from mpesa_sync.errors import ConfigError
from tests.support.cli import run_cli, run_module, run_on_terminal
from tests.support.database import Database
from tests.support.waiting import wait_for

REPORT_KEYS = {"consistent", "dry_run", "checked", "drifted", "fixed", "failed", "remaining"}


def _bars(db: Database, count: int, *, active: bool = True) -> list[uuid.UUID]:
    """``count`` bars, each with one credential row, made in one statement each."""
    rows = db.query(
        """WITH b AS (
               INSERT INTO bars (name) SELECT 'bar ' || i FROM generate_series(1, %s) AS i
               RETURNING id)
           INSERT INTO mpesa_credentials (tenant_id, environment, business_shortcode,
               consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)
           SELECT id, 'sandbox', '174379', 'k', 's', 'p', %s FROM b
           RETURNING tenant_id""",
        (count, active),
    )
    return sorted(row["tenant_id"] for row in rows)


def _flip_behind_triggers(db: Database, bars: list[uuid.UUID]) -> None:
    """Drift: invert mpesa_enabled of ``bars`` in replica mode (the superuser's)."""
    with db.admin_connect() as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(
            "UPDATE bars SET mpesa_enabled = NOT mpesa_enabled WHERE id = ANY(%s)", (bars,)
        )


def _state(db: Database) -> list[list[dict[str, Any]]]:
    return [
        db.query("SELECT * FROM bars ORDER BY id"),
        db.query("SELECT * FROM mpesa_sync.status_events ORDER BY event_id"),
        db.query("SELECT * FROM mpesa_sync.alerts ORDER BY id"),
    ]


def _lock_waiters(db: Database) -> int:
    return db.scalar(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )


def test_fixes_replica_drift_with_reconcile_events(db: Database) -> None:
    on = _bars(db, 4)
    off = _bars(db, 3, active=False)
    nobody = db.add_bar("no credentials")
    _flip_behind_triggers(db, [*on[:3], *off[:2]])
    db.force_enabled(nobody, None)
    drifted = {*on[:3], *off[:2], nobody}
    before = {e["event_id"] for e in db.events()}

    result = run_cli("reconcile", "--dsn", db.dsn, "--batch-size", "2", "--format", "json")

    assert result.code == 0, result
    assert json.loads(result.stdout) == {
        "consistent": True,
        "dry_run": False,
        "checked": 8,
        "drifted": 6,
        "fixed": 6,
        "failed": [],
        "remaining": 0,
    }
    assert db.drift() == []
    new = [e for e in db.events() if e["event_id"] not in before]
    assert sorted(e["bar_id"] for e in new) == sorted(drifted)
    assert {e["source"] for e in new} == {"reconcile"}
    assert {e["bar_id"]: e["mpesa_enabled"] for e in new} == {
        **dict.fromkeys(on[:3], True),
        **dict.fromkeys([*off[:2], nobody], False),
    }
    assert db.query("SELECT * FROM mpesa_sync.alerts") == []

    again = run_cli("reconcile", "--dsn", db.dsn)
    assert again.code == 0
    assert "checked 8 bars: 0 drifted, 0 fixed, 0 refused" in again.stdout


def test_dry_run_changes_nothing_and_exits_like_verify(db: Database) -> None:
    bars = _bars(db, 5)
    _flip_behind_triggers(db, bars[:2])
    before = _state(db)

    result = run_cli("reconcile", "--dsn", db.dsn, "--dry-run", "--format", "json")

    assert result.code == 1
    assert json.loads(result.stdout) == {
        "consistent": False,
        "dry_run": True,
        "checked": 5,
        "drifted": 2,
        "fixed": 0,
        "failed": [],
        "remaining": 2,
    }
    assert _state(db) == before
    text = run_cli("reconcile", "--dsn", db.dsn, "--dry-run")
    assert text.code == 1
    assert "dry run: 2 of 5 bars drifted; nothing changed" in text.stdout
    assert _state(db) == before

    run_cli("reconcile", "--dsn", db.dsn)
    assert run_cli("reconcile", "--dsn", db.dsn, "--dry-run").code == 0


def test_bar_refused_by_a_host_check_is_reported_alerted_and_exit_1(db: Database) -> None:
    bars = _bars(db, 4)
    _flip_behind_triggers(db, bars)  # every bar now false, expected true
    blocked = bars[2]
    db.query("UPDATE bars SET slug = 'frozen' WHERE id = %s", (blocked,))
    db.query(
        "ALTER TABLE bars ADD CONSTRAINT frozen_bars_stay_off "
        "CHECK (slug IS DISTINCT FROM 'frozen' OR mpesa_enabled IS NOT TRUE)"
    )

    result = run_cli("reconcile", "--dsn", db.dsn, "--format", "json")

    assert result.code == 1
    report = json.loads(result.stdout)
    assert report.keys() == REPORT_KEYS
    assert (report["drifted"], report["fixed"], report["remaining"]) == (4, 3, 1)
    assert report["consistent"] is False
    [failed] = report["failed"]
    assert failed["bar_id"] == str(blocked)
    assert failed["sqlstate"] == "23514"
    assert failed["constraint"] == "frozen_bars_stay_off"
    assert "frozen_bars_stay_off" in failed["error"]
    assert [d["bar_id"] for d in db.drift()] == [blocked]
    [alert] = db.query("SELECT kind, bar_id, detail FROM mpesa_sync.alerts")
    assert (alert["kind"], alert["bar_id"]) == ("fix_refused", blocked)
    assert alert["detail"]["sqlstate"] == "23514"
    assert f"bar {blocked} refused its status fix" in result.stderr


def test_bar_locked_past_the_lock_timeout_is_reported(db: Database) -> None:
    bars = _bars(db, 3)
    _flip_behind_triggers(db, bars)
    with db.connect(autocommit=False) as holder:
        holder.execute("SELECT 1 FROM bars WHERE id = %s FOR UPDATE", (bars[0],))
        report = reconciliation.reconcile(db.dsn, lock_timeout=0.2)
    assert [(f.bar_id, f.sqlstate) for f in report.failed] == [(bars[0], "55P03")]
    assert (report.fixed, report.remaining, report.ok) == (2, 1, False)

    assert reconciliation.reconcile(db.dsn).ok  # the lock is gone: the next run fixes it
    assert db.drift() == []


def test_stale_value_never_overwrites_a_newer_credential_change(db: Database) -> None:
    """Reconcile computes "enable" from a snapshot in which the credential is
    still active, then waits on the bar's row lock while staff deactivate it.
    The zz_ BEFORE trigger recomputes under the lock, so the bar stays off."""
    [bar] = _bars(db, 1)
    db.force_enabled(bar, False)  # drifted: expected true
    setup_events = len(db.events())
    reports: list[reconciliation.ReconcileReport] = []
    with db.connect(autocommit=False) as staff:
        staff.execute(
            "UPDATE mpesa_credentials SET is_active = false WHERE tenant_id = %s", (bar,)
        )  # its trigger holds the bar's row lock until commit
        worker = threading.Thread(
            target=lambda: reports.append(reconciliation.reconcile(db.dsn, lock_timeout=30))
        )
        worker.start()
        wait_for("reconcile to wait on the bar's lock", lambda: _lock_waiters(db) == 1)
        staff.commit()
    worker.join(timeout=30)

    [report] = reports
    assert (report.drifted, report.failed, report.remaining) == (1, [], 0)
    assert db.enabled(bar) is False
    assert db.drift() == []
    assert db.events()[setup_events:] == []  # the bar never flickered on


def test_two_reconciles_at_once_do_no_harm(db: Database) -> None:
    bars = _bars(db, 300)
    _flip_behind_triggers(db, bars[::2])
    reports: list[reconciliation.ReconcileReport] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        reports.append(reconciliation.reconcile(db.dsn, batch_size=10))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(reports) == 2
    assert all(r.ok and r.failed == [] for r in reports)
    assert sum(r.fixed for r in reports) == 150  # each bar fixed once, by one of them
    assert db.drift() == []
    assert db.query("SELECT * FROM mpesa_sync.alerts") == []
    per_bar = db.query(
        "SELECT bar_id, count(*) AS n FROM mpesa_sync.status_events "
        "WHERE source = 'reconcile' GROUP BY bar_id"
    )
    assert len(per_bar) == 150
    assert {row["n"] for row in per_bar} == {1}


def test_reconcile_racing_staff_writes_ends_without_drift(db: Database) -> None:
    bars = _bars(db, 200)
    _flip_behind_triggers(db, bars[::2])
    stop = threading.Event()
    errors: list[BaseException] = []
    writes = [0]

    def staff(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with db.connect() as conn:
                while not stop.is_set():
                    conn.execute(
                        "UPDATE mpesa_credentials SET is_active = %s WHERE tenant_id = %s",
                        (rng.random() < 0.5, rng.choice(bars)),
                    )
                    writes[0] += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=staff, args=(seed,)) for seed in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_for("staff writes to start", lambda: writes[0] >= 20)
        report = reconciliation.reconcile(db.dsn, batch_size=5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    assert errors == []
    assert writes[0] > 20
    assert report.failed == []
    assert report.fixed <= report.drifted <= 100
    assert db.drift() == []
    assert db.query("SELECT * FROM mpesa_sync.alerts") == []


def test_database_without_our_schema_changes_nothing(host_db: Database) -> None:
    bar = host_db.add_bar("host default true, no credentials")  # drifted, no triggers
    result = run_module("reconcile", "--dsn", host_db.dsn, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "mpesa-sync: error: The mpesa_sync schema is not installed; run `mpesa-sync migrate` first."
    ]
    assert host_db.enabled(bar) is True


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["reconcile", "--batch-size", "0"], "0 is not in the range 1<=x<=2147483647"),
        (["reconcile", "--batch-size", "-5"], "Invalid value for '--batch-size'"),
        (["reconcile", "--batch-size", "many"], "'many' is not a valid integer"),
        (["reconcile", "--lock-timeout", "0"], "Invalid value for '--lock-timeout'"),
        (["reconcile", "--dry-run", "--bogus"], "No such option '--bogus'"),
        (["verify", "--limit", "-1"], "Invalid value for '--limit'"),
        (["verify", "--format", "yaml"], "Invalid value for '--format'"),
        (["verify", "--bogus"], "No such option '--bogus'"),
        (["verify", "--dsn", "not a dsn"], "invalid DSN"),
        *(
            ([command, "--dsn", "postgresql://nobody@127.0.0.1:1/none"], "cannot connect to")
            for command in ("verify", "reconcile", "reconcile --dry-run")
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    argv = [*args[0].split(), *args[1:]]
    result = run_cli(*argv, env={"MPESA_SYNC_DSN": "postgresql://x@127.0.0.1:1/x"})
    assert result.code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("mpesa-sync: error: ")
    assert needle in line
    assert result.stdout == ""


def test_progress_bar_only_on_a_terminal(db: Database) -> None:
    _flip_behind_triggers(db, _bars(db, 30))
    args = ["reconcile", "--dsn", db.dsn, "--batch-size", "10"]

    piped = run_module(*args, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert "fixing drifted bars" not in piped.stderr

    _flip_behind_triggers(db, _bars(db, 30))
    code, terminal = run_on_terminal(args)
    assert code == 0, terminal
    assert "fixing drifted bars" in terminal
    assert "100%" in terminal


def test_secrets_never_reach_the_output(db: Database) -> None:
    [bar] = _bars(db, 1)
    db.query(
        "UPDATE mpesa_credentials SET consumer_key_enc = 'KEY-SECRET-1', "
        "consumer_secret_enc = 'SECRET-2', passkey_enc = 'PASSKEY-3'"
    )
    db.force_enabled(bar, False)
    outputs = [
        run_cli("reconcile", "--dsn", db.dsn, "--dry-run", "--format", "json"),
        run_cli("verify", "--dsn", db.dsn, "--format", "json", "--limit", "0"),
        run_cli("reconcile", "--dsn", db.dsn, "--format", "json"),
    ]
    for result in outputs:
        for secret in ("KEY-SECRET-1", "SECRET-2", "PASSKEY-3"):
            assert secret not in result.stdout + result.stderr
    assert db.drift() == []


def test_library_refuses_a_non_positive_batch_size(db: Database) -> None:
    with pytest.raises(ConfigError, match="batch size must be at least 1"):
        reconciliation.reconcile(db.dsn, batch_size=0)
