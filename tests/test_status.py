"""`mpesa-sync status` in each state an install can be in: its JSON, its text
and its exit code (0 installed and current, 1 pending migrations or open
alerts, 2 not installed, a host column missing, or an error)."""

from __future__ import annotations

import json
from typing import Any

from mpesa_sync import __version__, alerts, migrations
from mpesa_sync.resources import migration_ids
from tests.support.catalog import describe
from tests.support.cli import assert_one_line_error, run_cli
from tests.support.database import Database
from tests.support.relay import log_state, set_active

HOST_COLUMNS = [
    ("bars", "id", "uuid"),
    ("bars", "mpesa_enabled", "boolean"),
    ("mpesa_credentials", "id", "uuid"),
    ("mpesa_credentials", "tenant_id", "uuid"),
    ("mpesa_credentials", "environment", "text"),
    ("mpesa_credentials", "business_shortcode", "text"),
    ("mpesa_credentials", "consumer_key_enc", "bytea"),
    ("mpesa_credentials", "consumer_secret_enc", "bytea"),
    ("mpesa_credentials", "passkey_enc", "bytea"),
    ("mpesa_credentials", "is_active", "boolean"),
]


def status(db: Database) -> tuple[int, dict[str, Any]]:
    result = run_cli("status", "--dsn", db.dsn, "--format", "json")
    assert result.stderr == "", result.stderr
    return result.code, json.loads(result.stdout)


def test_installed_and_current_is_exit_0(db: Database) -> None:
    bar = db.add_bar()
    db.add_credentials(bar, active=False)
    set_active(db, bar, True)
    set_active(db, bar, False)
    code, report = status(db)
    assert code == 0
    log = log_state(db)
    assert report == {
        "version": __version__,
        "installed": True,
        "current": True,
        "migrations": {"applied": migration_ids(), "pending": []},
        "event_log": {
            "events": 2,
            "oldest_event_id": 1,
            "newest_event_id": 2,
            "pruned_through": 0,
            "generation": log["generation"],
        },
        "open_alerts": 0,
        "realtime": {
            "enabled": False,
            "topics": None,
            "policies": 0,
            "state_call": False,
            "failures": 0,
            "events_lost": 0,
            "last_sqlstate": None,
            "last_failed_at": None,
        },
        "host_columns": [
            {"table": t, "column": c, "type": ty, "present": True} for t, c, ty in HOST_COLUMNS
        ],
        "history_in_public": False,
        "half_installed": False,
    }
    text = run_cli("status", "--dsn", db.dsn)
    assert text.code == 0
    assert text.stdout.splitlines() == [
        f"mpesa-sync {__version__}: current",
        f"migrations: {len(migration_ids())} applied, 0 pending",
        f"event log: 2 event(s) (1..2), pruned through 0, generation {log['generation']}",
        "open alerts: 0",
        "realtime broadcast: off",
        f"host columns: all {len(HOST_COLUMNS)} present",
    ]


def test_an_open_alert_is_exit_1_until_acknowledged(db: Database) -> None:
    alert = alerts.raise_alert(db.dsn, "fix_refused", None, {})
    code, report = status(db)
    assert (code, report["open_alerts"], report["current"]) == (1, 1, True)
    assert run_cli("alerts", "ack", str(alert), "--dsn", db.dsn).code == 0
    assert status(db)[0] == 0


def test_a_pending_migration_is_exit_1(db: Database) -> None:
    newest = migration_ids()[-1]
    assert migrations.rollback(db.dsn) == [newest]
    code, report = status(db)
    assert code == 1
    assert (report["installed"], report["current"]) == (True, False)
    assert report["migrations"] == {"applied": migration_ids()[:-1], "pending": [newest]}
    assert report["event_log"]["events"] == 0  # the newest migration leaves the log alone
    text = run_cli("status", "--dsn", db.dsn)
    assert text.code == 1 and f"1 pending ({newest})" in text.stdout


def test_not_installed_is_exit_2_and_changes_nothing(host_db: Database) -> None:
    host_db.execute("ALTER TABLE mpesa_credentials DROP COLUMN is_active")
    before = describe(host_db.dsn, skip_yoyo=False)
    code, report = status(host_db)
    assert code == 2
    assert (report["installed"], report["current"]) == (False, False)
    assert report["migrations"] == {"applied": [], "pending": migration_ids()}
    assert (report["event_log"], report["open_alerts"]) == (None, None)
    missing = [c for c in report["host_columns"] if not c["present"]]
    assert missing == [
        {"table": "mpesa_credentials", "column": "is_active", "type": "boolean", "present": False}
    ]
    text = run_cli("status", "--dsn", host_db.dsn)
    assert text.code == 2 and "NOT INSTALLED" in text.stdout
    assert "MISSING mpesa_credentials.is_active (boolean)" in text.stdout
    assert describe(host_db.dsn, skip_yoyo=False) == before  # not even yoyo's tables


def test_an_empty_database_and_an_unreachable_one_are_exit_2(empty_db: Database) -> None:
    code, report = status(empty_db)
    assert code == 2 and not report["installed"]
    assert not any(c["present"] for c in report["host_columns"])
    result = run_cli("status", "--dsn", "postgresql://nobody@127.0.0.1:1/none")
    assert result.code == 2
    assert_one_line_error(result.stderr, "cannot connect")
