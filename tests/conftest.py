"""Real PostgreSQL for every test that needs one: one fresh database per test,
copied from a template that has the host schema and every migration applied.

The helpers behind these fixtures live in tests/support/.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.database import (
    ROLES,
    Database,
    build_templates,
    fresh_database,
    templates,
)
from tests.support.servers import Server, ServerSpec, specs

_SPECS = specs()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Who a test's database belongs to and who runs it: the owner who is no
    superuser, as on a managed host, unless marked ``roles(...)``: the
    install, upgrade, rollback, settings, relay and prune tests run as the
    superuser as well."""
    if "role" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("roles")
        roles = marker.args if marker else ROLES[:1]
        assert set(roles) <= set(ROLES), roles
        metafunc.parametrize("role", roles)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A module marked ``no_database`` must stay runnable without a server."""
    for item in items:
        needs = getattr(item, "fixturenames", ())
        if item.get_closest_marker("no_database") and "server" in needs:
            raise pytest.UsageError(f"{item.nodeid} is marked no_database but needs a server")


@pytest.fixture(scope="session", params=_SPECS, ids=[s.label for s in _SPECS])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    spec: ServerSpec = request.param
    srv = spec.start()
    try:
        build_templates(srv)
        yield srv
    finally:
        srv.close()


@pytest.fixture
def db(server: Server, role: str) -> Iterator[Database]:
    """A fresh, migrated database."""
    with fresh_database(server, templates(role)[1], role=role) as database:
        yield database


@pytest.fixture
def host_db(server: Server, role: str) -> Iterator[Database]:
    """A fresh database with the host schema and nothing of ours."""
    with fresh_database(server, templates(role)[0], role=role) as database:
        yield database


@pytest.fixture
def empty_db(server: Server, role: str) -> Iterator[Database]:
    """A fresh database with nothing in it."""
    with fresh_database(server, "template0", role=role) as database:
        yield database
