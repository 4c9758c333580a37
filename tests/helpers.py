"""Small helpers every test module uses against a real database."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from click.testing import CliRunner
from psycopg.rows import dict_row

from mpesa_sync.cli import main
from tests.servers import Server

DRIFT_SQL = """
    SELECT bar_id, mpesa_enabled, expected
    FROM mpesa_sync.bar_status_v1
    WHERE mpesa_enabled IS DISTINCT FROM expected
    ORDER BY bar_id
"""


@dataclass
class Database:
    """One fresh database, made from the migrated template for one test."""

    server: Server
    name: str

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name)

    def connect(self, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=autocommit, **kwargs)

    def query(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        with self.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def execute(self, sql: str, params: Any = None) -> None:
        with self.connect() as conn:
            conn.execute(sql, params)

    def scalar(self, sql: str, params: Any = None) -> Any:
        with self.connect() as conn:
            row = conn.execute(sql, params).fetchone()
            return row[0] if row else None

    # -- the host's data ------------------------------------------------------

    def add_bar(self, name: str = "bar", **columns: Any) -> uuid.UUID:
        cols = {"name": name, **columns}
        names = ", ".join(cols)
        marks = ", ".join(["%s"] * len(cols))
        return self.scalar(
            f"INSERT INTO bars ({names}) VALUES ({marks}) RETURNING id", list(cols.values())
        )

    def add_credentials(
        self,
        bar_id: uuid.UUID,
        environment: str = "sandbox",
        *,
        active: bool | None = True,
        shortcode: str = "174379",
        key: bytes = b"k",
        secret: bytes = b"s",
        passkey: bytes = b"p",
    ) -> uuid.UUID:
        return self.scalar(
            """INSERT INTO mpesa_credentials (tenant_id, environment, business_shortcode,
                   consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)
               VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (bar_id, environment, shortcode, key, secret, passkey, active),
        )

    def enabled(self, bar_id: uuid.UUID) -> bool | None:
        return self.scalar("SELECT mpesa_enabled FROM bars WHERE id = %s", (bar_id,))

    def drift(self) -> list[dict[str, Any]]:
        return self.query(DRIFT_SQL)

    def force_enabled(self, bar_id: uuid.UUID, value: bool | None) -> None:
        """Write mpesa_enabled behind the triggers' back (replica mode)."""
        with self.connect() as conn, conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("UPDATE bars SET mpesa_enabled = %s WHERE id = %s", (value, bar_id))

    def events(self) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM mpesa_sync.status_events ORDER BY event_id")

    def saved_state(self, bar_id: Any) -> dict[str, Any]:
        """All a settings save could change, in full: the bar's row, its
        credential rows and every status event (alerts are asked for apart)."""
        return {
            "credentials": self.query(
                "SELECT * FROM mpesa_credentials WHERE tenant_id = %s ORDER BY environment",
                (bar_id,),
            ),
            "bar": self.query("SELECT * FROM bars WHERE id = %s", (bar_id,)),
            "events": self.events(),
        }


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_module(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m mpesa_sync ARGS`` in a child process, to its end: what a shell
    sees on real stdout and stderr (no traceback can hide in a test runner)."""
    return subprocess.run(
        [sys.executable, "-m", "mpesa_sync", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def run_cli(*args: str, env: dict[str, str | None] | None = None) -> CliResult:
    """Run ``mpesa_sync.cli.main`` in this process, as a shell would (exit code,
    stdout, stderr), and leave the logging set-up as it was."""
    handlers, level = logging.root.handlers[:], logging.root.level
    with CliRunner().isolation(env=env) as (out, err, _):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    logging.root.handlers[:], logging.root.level = handlers, level
    return CliResult(code if isinstance(code, int) else 0, stdout, stderr)
