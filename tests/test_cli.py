"""The command line's own promises against a real database: what `verify`
loads, and how a database refusal reaches the operator and a library caller."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from psycopg import conninfo, errors, sql

from mpesa_sync import DatabaseError, verify
from tests.support.cli import assert_one_line_error, run_cli
from tests.support.database import Database

HEAVY = {"uvicorn", "starlette", "httpx", "yoyo", "psycopg_pool", "tenacity", "cryptography"}


def test_verify_loads_neither_the_web_stack_nor_yoyo(db: Database) -> None:
    bar = db.add_bar()
    db.add_credentials(bar)
    script = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))\n"
        "from mpesa_sync.cli import main\n"
        f"main(['verify', '--dsn', {db.dsn!r}])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("consistent: 1 bars checked")  # it did the whole run
    loaded = {name.split(".")[0] for name in json.loads(result.stderr.splitlines()[-1])}
    assert "psycopg" in loaded
    assert loaded & HEAVY == set()


@pytest.fixture
def unprivileged_dsn(db: Database) -> Iterator[str]:
    """A role that may connect but was granted nothing of mpesa_sync."""
    role = f"nobody_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        yield conninfo.make_conninfo(db.dsn, user=role)
    finally:
        db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_refusal_is_one_line_with_its_sqlstate(unprivileged_dsn: str) -> None:
    result = run_cli("verify", "--dsn", unprivileged_dsn)
    assert result.code == 2
    assert_one_line_error(result.stderr, "database error: permission denied")
    assert result.stderr.rstrip().endswith("(SQLSTATE 42501)")


def test_a_library_caller_gets_our_error_with_the_drivers_as_its_cause(
    unprivileged_dsn: str,
) -> None:
    with pytest.raises(DatabaseError) as caught:
        verify(unprivileged_dsn)
    assert caught.value.sqlstate == "42501"
    assert isinstance(caught.value.__cause__, errors.InsufficientPrivilege)


def test_debug_logging_shows_the_whole_chain(unprivileged_dsn: str) -> None:
    result = run_cli("--log-level", "debug", "verify", "--dsn", unprivileged_dsn)
    assert result.code == 2
    assert "psycopg.errors.InsufficientPrivilege" in result.stderr
    assert "direct cause of the following exception" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("mpesa-sync: error: database error")
