"""Debian's PgBouncer in transaction mode, in front of a test server.

``make test`` installs it where it may (tests/support/install-pgbouncer);
where it is missing, the pooler tests fail with one line that says how to
install it, rather than pass without having run.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import conninfo

from devtools.cluster import free_port, unprivileged_user
from tests.support.database import OWNER

BINARY = Path("/usr/sbin/pgbouncer")
MISSING = (
    "PgBouncer is not installed: the pooler tests need Debian's pgbouncer "
    "(`apt-get install pgbouncer` as root; `make test` does it where it may)"
)


class PgBouncer:
    """A running PgBouncer in transaction mode; ``dsn(dsn)`` is ``dsn`` through it."""

    def __init__(self, server_dsn: str, pool_size: int = 4) -> None:
        if not BINARY.exists():
            raise RuntimeError(MISSING)
        info = conninfo.conninfo_to_dict(server_dsn)
        self.port = free_port()
        self._root = Path(tempfile.mkdtemp(prefix="mpesa-sync-pgbouncer-"))
        users = ["postgres", OWNER]
        (self._root / "users.txt").write_text("".join(f'"{u}" ""\n' for u in users))
        (self._root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={info.get('host', '127.0.0.1')} port={info.get('port', 5432)}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self._root / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 500\n"
            f"logfile = {self._root / 'pgbouncer.log'}\n"
            f"pidfile = {self._root / 'pgbouncer.pid'}\n"
        )
        user = unprivileged_user()  # PgBouncer will not run as root
        if user:
            shutil.chown(self._root, user.pw_uid, user.pw_gid)
            for path in self._root.iterdir():
                shutil.chown(path, user.pw_uid, user.pw_gid)
        self._process = subprocess.Popen(
            [str(BINARY), str(self._root / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )
        self._wait_ready(server_dsn)

    def dsn(self, dsn: str) -> str:
        """``dsn`` with its host and port replaced by this pooler's."""
        info = conninfo.conninfo_to_dict(dsn)
        info.update(host="127.0.0.1", port=str(self.port))
        return conninfo.make_conninfo(**info)

    def _wait_ready(self, server_dsn: str) -> None:
        deadline = time.monotonic() + 15
        while True:
            try:
                with psycopg.connect(self.dsn(server_dsn), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                    return
            except psycopg.OperationalError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"PgBouncer did not start: {self.log_tail()}") from None
                time.sleep(0.05)  # polling a port for a process we just started

    def log_tail(self) -> str:
        log = self._root / "pgbouncer.log"
        return log.read_text()[-2000:] if log.exists() else ""

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        if self._process.stderr:
            self._process.stderr.close()
        shutil.rmtree(self._root, ignore_errors=True)


@contextmanager
def pgbouncer(server_dsn: str, pool_size: int = 4) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(server_dsn, pool_size)
    try:
        yield bouncer
    finally:
        bouncer.close()
