"""`mpesa-sync verify`: read-only, exit codes for monitoring, JSON, Prometheus."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mpesa_sync import db as mpesa_db
from mpesa_sync import verification
from tests.support.cli import run_cli
from tests.support.database import Database


def _bars(db: Database, active: int, inactive: int = 0) -> list[uuid.UUID]:
    """Bars with an active credential, then bars with an inactive one."""
    ids = []
    for i in range(active + inactive):
        bar = db.add_bar(f"bar {i}")
        db.add_credentials(bar, active=i < active)
        ids.append(bar)
    return ids


def _state(db: Database) -> list[list[dict[str, Any]]]:
    """Everything verify could conceivably change."""
    return [
        db.query("SELECT * FROM bars ORDER BY id"),
        db.query("SELECT * FROM mpesa_sync.status_events ORDER BY event_id"),
        db.query("SELECT * FROM mpesa_sync.alerts ORDER BY id"),
    ]


def test_consistent_database_exits_0(db: Database) -> None:
    _bars(db, active=2, inactive=1)
    db.add_bar("no credentials")

    text = run_cli("verify", "--dsn", db.dsn)
    assert text.code == 0, text
    assert "consistent: 4 bars checked" in text.stdout

    result = run_cli("verify", "--dsn", db.dsn, "--format", "json")
    assert result.code == 0
    assert json.loads(result.stdout) == {
        "consistent": True,
        "checked": 4,
        "drifted_total": 0,
        "truncated": False,
        "drifted": [],
        "open_alerts": 0,
        "checked_at": json.loads(result.stdout)["checked_at"],
    }


def test_drift_made_behind_the_triggers_is_reported_and_left_alone(db: Database) -> None:
    on, off = _bars(db, active=1, inactive=1)
    nobody = db.add_bar("no credentials")
    _bars(db, active=1)  # stays consistent
    db.force_enabled(on, False)
    db.force_enabled(off, True)
    db.force_enabled(nobody, None)
    before = _state(db)

    result = run_cli("verify", "--dsn", db.dsn, "--format", "json")

    assert result.code == 1
    report = json.loads(result.stdout)
    assert report["consistent"] is False
    assert report["checked"] == 4
    assert report["drifted_total"] == 3
    expected = {
        str(on): (False, True),
        str(off): (True, False),
        str(nobody): (None, False),
    }
    assert report["drifted"] == [
        {"bar_id": bar, "mpesa_enabled": expected[bar][0], "expected": expected[bar][1]}
        for bar in sorted(expected)
    ]
    assert _state(db) == before

    text = run_cli("verify", "--dsn", db.dsn)
    assert text.code == 1
    assert "drift: 3 of 4 bars drifted" in text.stdout
    assert f"{nobody}  mpesa_enabled=null  expected=false" in text.stdout


def test_limit_cuts_the_list_but_not_the_total(db: Database) -> None:
    bars = _bars(db, active=5)
    for bar in bars:
        db.force_enabled(bar, False)

    cut = json.loads(run_cli("verify", "--dsn", db.dsn, "--format", "json", "--limit", "2").stdout)
    assert cut["drifted_total"] == 5
    assert cut["truncated"] is True
    listed = [b["bar_id"] for b in cut["drifted"]]
    assert len(listed) == 2
    assert listed == sorted(listed)
    assert set(listed) <= {str(b) for b in bars}

    every = json.loads(
        run_cli("verify", "--dsn", db.dsn, "--format", "json", "--limit", "0").stdout
    )
    assert every["truncated"] is False
    assert len(every["drifted"]) == 5

    text = run_cli("verify", "--dsn", db.dsn, "--limit", "2")
    assert "... and 3 more" in text.stdout


def test_runs_in_one_read_only_snapshot(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    _bars(db, active=1)
    seen: list[psycopg.Connection[Any]] = []
    real = mpesa_db.connect

    def spy(*args: Any, **kwargs: Any) -> psycopg.Connection[Any]:
        conn = real(*args, **kwargs)
        seen.append(conn)
        return conn

    monkeypatch.setattr(mpesa_db, "connect", spy)
    verification.verify(db.dsn)

    [conn] = seen
    assert conn.read_only is True
    assert conn.isolation_level == psycopg.IsolationLevel.REPEATABLE_READ


def test_set_based_scan_agrees_with_bar_status_v1(db: Database) -> None:
    """drift_scan restates the rule as a set; it must see exactly what the view sees."""
    cases: list[tuple[list[bool | None], bool | None]] = [
        # (is_active of each credential row, forced mpesa_enabled)
        ([], None),
        ([], True),
        ([], False),
        ([None], True),
        ([None], False),
        ([False], True),
        ([True], False),
        ([True], None),
        ([True], True),
        ([False, True], False),
        ([False, True], True),
        ([None, False], True),
        ([True, True], False),
        ([False, False], False),
    ]
    for rows, forced in cases:
        bar = db.add_bar()
        for active, environment in zip(rows, ("sandbox", "production"), strict=False):
            db.add_credentials(bar, environment, active=active)
        db.force_enabled(bar, forced)

    with psycopg.connect(db.dsn) as conn:
        scan = verification.scan_drift(conn, limit=None)
    expected = {row["bar_id"] for row in db.drift()}
    assert (scan.checked, scan.drifted) == (len(cases), len(expected))
    assert set(scan.sample) == expected
    assert len(expected) == 9  # the cases above cover both kinds of drift and NULLs


def test_prometheus_textfile(db: Database, tmp_path: Path) -> None:
    bars = _bars(db, active=3)
    db.force_enabled(bars[0], False)
    db.scalar("SELECT mpesa_sync.raise_alert_v1('test', NULL, '{}')")
    path = tmp_path / "mpesa_sync.prom"
    path.write_text("stale content\n")
    started = time.time()

    result = run_cli("verify", "--dsn", db.dsn, "--prometheus-file", str(path))

    assert result.code == 1
    metrics = {
        sample.name: sample.value
        for family in text_string_to_metric_families(path.read_text())
        for sample in family.samples
    }
    assert metrics["mpesa_sync_drifted_bars"] == 1
    assert metrics["mpesa_sync_bars_checked"] == 3
    assert metrics["mpesa_sync_open_alerts"] == 1
    assert started - 1 <= metrics["mpesa_sync_last_check_timestamp_seconds"] <= time.time() + 1
    assert [p.name for p in tmp_path.iterdir()] == ["mpesa_sync.prom"]  # no temporary left


def test_prometheus_file_that_cannot_be_written_is_exit_2(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "missing-folder" / "mpesa_sync.prom"
    result = run_cli("verify", "--dsn", db.dsn, "--prometheus-file", str(path))
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        f"mpesa-sync: error: cannot write the Prometheus file {path}: No such file or directory"
    ]


def test_database_without_our_schema_is_exit_2(host_db: Database) -> None:
    result = run_cli("verify", "--dsn", host_db.dsn)
    assert result.code == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "mpesa-sync: error: The mpesa_sync schema is not installed; run `mpesa-sync migrate` first."
    ]
