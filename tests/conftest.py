"""Real PostgreSQL for every test: one fresh database per test, copied from a
template that has the host schema and every migration applied."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from mpesa_sync import migrations
from mpesa_sync.resources import resource_dir
from tests.helpers import Database
from tests.servers import Server, ServerSpec, specs

HOST_SQL = resource_dir("sql") / "host_example.sql"
HOST_TEMPLATE = "mpesa_host_template"  # host schema only
MIGRATED_TEMPLATE = "mpesa_migrated_template"  # host schema + migrations

_SPECS = specs()


@pytest.fixture(scope="session", params=_SPECS, ids=[s.label for s in _SPECS])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    spec: ServerSpec = request.param
    srv = spec.start()
    try:
        _build_templates(srv)
        yield srv
    finally:
        srv.close()


def _build_templates(srv: Server) -> None:
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        for name in (MIGRATED_TEMPLATE, HOST_TEMPLATE):
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(HOST_TEMPLATE)))
    with psycopg.connect(srv.dsn(HOST_TEMPLATE), autocommit=True) as conn:
        conn.execute(HOST_SQL.read_text())
    _create_database(srv, MIGRATED_TEMPLATE, HOST_TEMPLATE)
    migrations.migrate(srv.dsn(MIGRATED_TEMPLATE))


def _create_database(srv: Server, name: str, template: str) -> None:
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )


def _drop_database(srv: Server, name: str) -> None:
    with psycopg.connect(srv.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _fresh(srv: Server, template: str) -> Iterator[Database]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    _create_database(srv, name, template)
    try:
        yield Database(srv, name)
    finally:
        _drop_database(srv, name)


@pytest.fixture
def db(server: Server) -> Iterator[Database]:
    """A fresh, migrated database."""
    yield from _fresh(server, MIGRATED_TEMPLATE)


@pytest.fixture
def host_db(server: Server) -> Iterator[Database]:
    """A fresh database with the host schema and nothing of ours."""
    yield from _fresh(server, HOST_TEMPLATE)


@pytest.fixture
def empty_db(server: Server) -> Iterator[Database]:
    """A fresh database with nothing in it."""
    yield from _fresh(server, "template0")
