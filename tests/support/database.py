"""Fresh databases for tests: made from templates, and what a test does with one.

The session builds two templates per server: the host's schema alone, and
the host's schema with every migration applied. Each test gets its own copy
(``CREATE DATABASE ... TEMPLATE``), which is fast and fully isolated.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from mpesa_sync import migrations
from mpesa_sync.resources import resource_dir
from tests.support.servers import Server

HOST_SQL = resource_dir("sql") / "host_example.sql"
HOST_TEMPLATE = "mpesa_host_template"  # host schema only
MIGRATED_TEMPLATE = "mpesa_migrated_template"  # host schema + migrations

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


def build_templates(srv: Server) -> None:
    """(Re)build both templates on ``srv``."""
    for name in (MIGRATED_TEMPLATE, HOST_TEMPLATE):
        drop_database(srv, name)
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(HOST_TEMPLATE)))
    with psycopg.connect(srv.dsn(HOST_TEMPLATE), autocommit=True) as conn:
        conn.execute(HOST_SQL.read_text())
    create_database(srv, MIGRATED_TEMPLATE, HOST_TEMPLATE)
    migrations.migrate(srv.dsn(MIGRATED_TEMPLATE))


def create_database(srv: Server, name: str, template: str) -> None:
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )


def drop_database(srv: Server, name: str) -> None:
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def fresh_database(srv: Server, template: str, prefix: str = "test") -> Iterator[Database]:
    """A new database copied from ``template``, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    create_database(srv, name, template)
    try:
        yield Database(srv, name)
    finally:
        drop_database(srv, name)
