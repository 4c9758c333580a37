"""The command line without a database: its command list, and options
refused before the database is touched (mpesa_sync/cli.py).

No database (marked ``no_database``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import click
import pytest

from mpesa_sync import cli
from mpesa_sync.resources import resource_dir
from tests.support.cli import assert_one_line_error, run_cli

pytestmark = pytest.mark.no_database


def test_the_command_list_shows_each_commands_own_summary() -> None:
    ctx = click.Context(cli.cli)
    for name, entry in cli.COMMANDS.items():
        command = cli.cli.get_command(ctx, name)
        assert command is not None and command.name == name
        assert entry.summary == command.get_short_help_str(limit=1000), name


NOWHERE = "postgresql://nobody@127.0.0.1:1/nowhere"  # any use of it would say "cannot connect"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["reconcile", "--lock-timeout", "nan"], "'nan' is not a finite number"),
        (["reconcile", "--lock-timeout", "inf"], "--lock-timeout"),
        (["reconcile", "--lock-timeout", "-inf"], "--lock-timeout"),
        (["reconcile", "--lock-timeout", "1e9"], "--lock-timeout"),
        (["reconcile", "--lock-timeout", "0"], "--lock-timeout"),
        (["reconcile", "--batch-size", "0"], "--batch-size"),
        (["reconcile", "--batch-size", str(2**31)], "--batch-size"),
        (["verify", "--limit", str(2**31)], "--limit"),
        (["verify", "--limit", "-1"], "--limit"),
        (["alerts", "ack", str(2**63)], "ID"),
        (["rollback", "--steps", str(2**31)], "--steps"),
        (["settings", "check", "--bar", str(uuid.UUID(int=1)), "--timeout", "nan"], "finite"),
        (["settings", "check", "--bar", str(uuid.UUID(int=1)), "--timeout", "inf"], "--timeout"),
        (["settings", "check", "--bar", str(uuid.UUID(int=1)), "--timeout", "1e9"], "--timeout"),
        (["relay", "--since", "nan"], "is not EVENT_ID"),
        (["relay", "--since", str(2**63)], "is not EVENT_ID"),
        (["relay", "--http", "127.0.0.1:0", "--max-clients", "0"], "--max-clients"),
        (["relay", "--http", "127.0.0.1:0", "--max-clients", "inf"], "--max-clients"),
        (["relay", "--http", "127.0.0.1:0", "--max-clients", "1e9"], "--max-clients"),
        (["relay", "--http", "h:0", "--allow-origin", "https://app.example/x"], "not an origin"),
        (["relay", "--http", "h:0", "--allow-origin", "*"], "is not an origin"),
        (["relay", "--http", "h:0", "--allow-origin", "app.example"], "is not an origin"),
        (["relay", "--allow-origin", "https://app.example"], "need --http"),
        (["prune", "--older-than", "30"], "a number and a unit"),
        (["prune", "--older-than", "0d"], "must be above 0"),
        (["prune", "--older-than", "36501d"], "at most 36500d"),
        (["prune", "--older-than", "-1d"], "a number and a unit"),
        (["prune", "--older-than", "nand"], "a number and a unit"),
        (["prune", "--older-than", "1e3d"], "a number and a unit"),
        (["prune", "--older-than", "30d", "--batch-size", "0"], "--batch-size"),
        (["prune", "--older-than", "30d", "--batch-size", "1000001"], "--batch-size"),
        (["prune"], "--older-than"),
    ],
)
def test_bad_options_are_refused_before_the_database(args: list[str], needle: str) -> None:
    result = run_cli(*args, "--dsn", NOWHERE)
    assert result.code == 2, result.stderr
    assert_one_line_error(result.stderr, needle)
    assert "cannot connect" not in result.stderr


def test_migrations_dir_prints_the_folder_yoyo_reads() -> None:
    result = run_cli("migrations-dir")
    assert result.code == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert folder == resource_dir("migrations") and (folder / "0001_mpesa_sync_base.sql").exists()
