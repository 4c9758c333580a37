"""Alerts reach people: NOTIFY on each new alert, `mpesa-sync alerts`, `alerts ack ID`."""

from __future__ import annotations

import json
import logging

import pytest

from mpesa_sync import alerts
from tests.support.cli import assert_one_line_error, run_cli
from tests.support.database import Database

NO_DSN = {"MPESA_SYNC_DSN": None}


def test_each_new_alert_is_announced_without_its_detail(db: Database) -> None:
    bar = db.add_bar()
    with db.connect() as listener:
        listener.execute("LISTEN mpesa_alerts")
        first = alerts.raise_alert(db.dsn, "settings_save_failed", bar, {"sqlstate": "55P03"})
        second = alerts.raise_alert(db.dsn, "fix_refused", None, {})
        notes = list(listener.notifies(timeout=2, stop_after=2))
    payloads = [json.loads(n.payload) for n in notes]
    assert [(p["id"], p["kind"], p["bar_id"]) for p in payloads] == [
        (first, "settings_save_failed", str(bar)),
        (second, "fix_refused", None),
    ]
    assert all("detail" not in p for p in payloads)


def test_an_alert_that_cannot_be_written_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert (
        alerts.raise_alert(
            "postgresql://postgres@127.0.0.1:1/x?connect_timeout=2",
            "settings_save_failed",
            None,
            {},
        )
        is None
    )
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "alert_failed"]
    assert record.levelno == logging.ERROR


def test_list_ack_and_list_all(db: Database) -> None:
    bar = db.add_bar()
    first = alerts.raise_alert(db.dsn, "settings_save_failed", bar, {"sqlstate": "40001"})
    second = alerts.raise_alert(db.dsn, "fix_refused", None, {"error": "refused"})

    listed = run_cli("alerts", "--dsn", db.dsn, "--format", "json", env=NO_DSN)
    assert listed.code == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["kind"], r["bar_id"], r["detail"], r["acknowledged_at"]) for r in rows] == [
        (first, "settings_save_failed", str(bar), {"sqlstate": "40001"}, None),
        (second, "fix_refused", None, {"error": "refused"}, None),
    ]

    # --dsn after `ack`, or before it on the group
    acked = run_cli("alerts", "ack", str(first), "--dsn", db.dsn, env=NO_DSN)
    assert (acked.code, acked.stdout.strip()) == (0, f"acknowledged alert {first}")
    again = run_cli("alerts", "--dsn", db.dsn, "ack", str(first), env=NO_DSN)
    assert again.code == 0 and "was already acknowledged" in again.stdout
    stamp = db.scalar("SELECT acknowledged_at FROM mpesa_sync.alerts WHERE id = %s", (first,))
    assert stamp is not None

    text = run_cli("alerts", "--dsn", db.dsn, env=NO_DSN)
    assert text.code == 0
    assert [line.split()[0] for line in text.stdout.splitlines()] == [str(second)]
    everything = run_cli("alerts", "--all", "--format", "json", env={"MPESA_SYNC_DSN": db.dsn})
    assert [(r["id"], r["acknowledged_at"] is not None) for r in json.loads(everything.stdout)] == [
        (first, True),
        (second, False),
    ]
    assert (
        db.scalar("SELECT acknowledged_at FROM mpesa_sync.alerts WHERE id = %s", (first,)) == stamp
    )  # a second ack keeps the first time


def test_no_open_alerts(db: Database) -> None:
    result = run_cli("alerts", "--dsn", db.dsn, env=NO_DSN)
    assert (result.code, result.stdout.strip()) == (0, "no open alerts")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["ack", "999"], "no alert with id 999"),
        (["ack", "abc"], "'abc' is not a valid integer"),
        (["ack"], "Missing argument 'ID'"),
    ],
    ids=["unknown-id", "not-a-number", "no-id"],
)
def test_ack_errors_are_one_line_and_exit_2(db: Database, args: list[str], needle: str) -> None:
    alert = alerts.raise_alert(db.dsn, "fix_refused", None, {})
    result = run_cli("alerts", *args, "--dsn", db.dsn, env=NO_DSN)
    assert result.code == 2
    assert_one_line_error(result.stderr, needle)
    assert (
        db.scalar("SELECT acknowledged_at FROM mpesa_sync.alerts WHERE id = %s", (alert,)) is None
    )


@pytest.mark.parametrize("args", [["alerts"], ["alerts", "ack", "1"]], ids=["list", "ack"])
def test_no_database_given_is_exit_2(args: list[str]) -> None:
    result = run_cli(*args, env=NO_DSN)
    assert result.code == 2
    assert "no database given" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_alerts_on_a_database_without_the_schema(host_db: Database) -> None:
    result = run_cli("alerts", "--dsn", host_db.dsn, env=NO_DSN)
    assert result.code == 2 and "mpesa-sync migrate" in result.stderr
