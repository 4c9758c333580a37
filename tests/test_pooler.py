"""Through a transaction-mode pooler (Debian's PgBouncer, pool_mode =
transaction), as serverless apps reach Supabase on port 6543, with other
clients' short queries on the same pooler all the while.

Writes, save_settings, verify, reconcile, prune and status work through it.
migrate, rollback and the relay need a session of their own: they refuse it
with one line naming the pooler before they change anything. Afterwards no
advisory lock is held on any server connection.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from mpesa_sync import credentials
from mpesa_sync.crypto import CredentialCipher
from tests.support.catalog import describe
from tests.support.cli import assert_one_line_error, run_cli
from tests.support.database import Database
from tests.support.pgbouncer import PgBouncer, pgbouncer
from tests.support.servers import Server
from tests.support.writers import TOGGLE

KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture(scope="module")
def bouncer(server: Server) -> Iterator[PgBouncer]:
    # four server connections for the suite's clients and our traffic: any
    # client's next transaction may run on any of them
    with pgbouncer(server.dsn(), pool_size=4) as running:
        yield running


class Traffic:
    """Six other clients running short queries through the pooler, as apps do."""

    def __init__(self, dsn: str, clients: int = 6) -> None:
        self.dsn, self.stopped = dsn, threading.Event()
        self.queries = 0
        self.errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None) as conn:
                while not self.stopped.is_set():
                    conn.execute("SELECT count(*) FROM bars").fetchone()
                    self.queries += 1
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)


def advisory_locks(db: Database) -> list[tuple[Any, ...]]:
    with db.admin_connect() as conn:
        return conn.execute(
            "SELECT pid, classid, objid FROM pg_locks WHERE locktype = 'advisory'"
        ).fetchall()


def test_writes_settings_verify_reconcile_and_prune_work_through_it(
    db: Database, bouncer: PgBouncer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pooled = bouncer.dsn(db.dsn)
    bars = [db.add_bar(f"bar {i}") for i in range(8)]
    for bar in bars:
        db.add_credentials(bar, active=False)
    monkeypatch.setenv("MPESA_SYNC_ENCRYPTION_KEY", KEY)
    with Traffic(pooled) as traffic:
        # toggles, each a transaction of its own, from two clients
        with (
            psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as a,
            psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as b,
        ):
            for round_ in range(5):
                for i, bar in enumerate(bars):
                    (a if (i + round_) % 2 else b).execute(TOGGLE, (bar,))
            # a multi-statement, multi-bar transaction
            with a.transaction():
                a.execute(TOGGLE, (bars[0],))
                a.execute(TOGGLE, (bars[1],))
        saved = credentials.save_settings(
            pooled, bars[2], "production", "600126", "key", "secret", "passkey", True,
            cipher=CredentialCipher.from_env(),
        )  # fmt: skip
        assert saved.mpesa_enabled is True
        assert run_cli("verify", "--dsn", pooled).code == 0
        db.force_enabled(bars[3], not db.enabled(bars[3]))
        assert run_cli("verify", "--dsn", pooled).code == 1
        fixed = run_cli("reconcile", "--dsn", pooled)
        assert fixed.code == 0, fixed.stderr
        assert run_cli("prune", "--older-than", "30d", "--dsn", pooled).code == 0
        assert run_cli("status", "--dsn", pooled).code == 0
    assert traffic.errors == [] and traffic.queries > 0
    assert db.drift() == []
    assert advisory_locks(db) == []


def test_session_commands_refuse_it_before_changing_anything(
    db: Database, host_db: Database, bouncer: PgBouncer
) -> None:
    before = describe(host_db.dsn, skip_yoyo=False)
    installed = describe(db.dsn, skip_yoyo=False)
    with Traffic(bouncer.dsn(db.dsn)), Traffic(bouncer.dsn(host_db.dsn)):
        for _ in range(3):  # every time, not by luck
            result = run_cli("migrate", "--dsn", bouncer.dsn(host_db.dsn))
            assert result.code == 2
            assert_one_line_error(result.stderr, "transaction-mode pooler")
            assert "direct address" in result.stderr and "nothing was changed" in result.stderr
        for args in (["rollback"], ["relay"], ["migrate"]):
            result = run_cli(*args, "--dsn", bouncer.dsn(db.dsn))
            assert result.code == 2, args
            assert_one_line_error(result.stderr, f"`mpesa-sync {args[0]}` needs a session")
    assert describe(host_db.dsn, skip_yoyo=False) == before  # not even yoyo's schema
    assert describe(db.dsn, skip_yoyo=False) == installed
    assert advisory_locks(db) == advisory_locks(host_db) == []
    # the direct address installs
    assert run_cli("migrate", "--dsn", host_db.dsn).code == 0
