"""`mpesa-sync relay` as a process: stdout lines, optional HTTP, signals.

One :class:`~mpesa_sync.relay.listener.Relay` feeds both the JSON lines on
stdout and, with an HTTP address, the :class:`~mpesa_sync.relay.app.RelayApp`.
SIGINT and SIGTERM stop both cleanly: the relay stops, which ends every SSE
stream, and the server closes. A reset is one JSON line on stdout too,
``{"reset": true, ...}``, whatever ``--bar`` says.

At start the relay raises its soft open-file limit to the hard limit (each
SSE client is a socket), and says on stderr how many clients the limit
allows when that is fewer than it should serve.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable, Collection
from typing import TextIO
from uuid import UUID

from mpesa_sync.errors import ConfigError
from mpesa_sync.relay.app import RelayApp
from mpesa_sync.relay.events import Position, StatusEvent
from mpesa_sync.relay.listener import Relay, RelayConfig, Sink
from mpesa_sync.relay.log import Item

logger = logging.getLogger(__name__)

_STOP_GRACE = 5.0  # seconds a stopping relay gets before it is cancelled
# Open files a relay wants when no --max-clients says otherwise: sockets for
# this many clients, plus the pool, the LISTEN connection and the process's own.
CLIENTS_WANTED = 65_536 - 64  # so that LimitNOFILE=65536 (docs/systemd) is enough
_SPARE_FILES = 64


async def serve(
    dsn: str,
    *,
    http: tuple[str, int] | None = None,
    since: Position | None = None,
    bar_id: UUID | None = None,
    out: TextIO | None = sys.stdout,
    config: RelayConfig | None = None,
    allow_origins: Collection[str] = (),
    max_clients: int | None = None,
    sock: socket.socket | None = None,
    labels: dict[str, str] | None = None,
) -> None:
    """Relay until SIGINT/SIGTERM.

    Raises (before anything is relayed) DatabaseUnavailable, SchemaNotInstalled
    or ConfigError for a bad start: an unreachable database, a ``since`` the
    log cannot honour, an address it cannot listen on. ``sock``: a listening
    socket to serve instead of opening ``http`` (a worker's); ``out`` None:
    no stdout lines (every worker but the first).
    """
    if sock is None and http is not None:
        sock = listen_socket(*http)
    if sock is not None:
        raise_open_file_limit(max_clients)
    relay = Relay(dsn, since=since, config=config)
    try:
        await relay.start()
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    if out is not None:
        relay.add_sink(stdout_sink(out, bar_id, relay))

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, relay.stop)
    app: RelayApp | None = None
    try:
        if sock is not None:
            app = RelayApp(
                relay, dsn, allow_origins=allow_origins, max_clients=max_clients, labels=labels
            )
            await app.start(sock)
            host, port = sock.getsockname()[:2]
            logger.info(
                "serving http://%s/ (SSE at /events)",
                netloc(host, port),
                extra={"action": "http_listening"},
            )
        await relay.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if app is not None:
            await asyncio.wait_for(app.close(), _STOP_GRACE)
        if sock is not None:
            sock.close()


def raise_open_file_limit(max_clients: int | None) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the clients it allows.

    Says so on stderr (a warning) when that is fewer than ``max_clients``
    (or CLIENTS_WANTED without a cap).
    """
    wanted = (max_clients or CLIENTS_WANTED) + _SPARE_FILES
    try:
        import resource
    except ImportError:  # not on Windows
        return wanted - _SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
    if soft != target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    allowed = (
        wanted - _SPARE_FILES if soft == resource.RLIM_INFINITY else max(0, soft - _SPARE_FILES)
    )
    if soft != resource.RLIM_INFINITY and soft < wanted:
        logger.warning(
            "the open-file limit (%d, hard limit %d) allows about %d SSE clients, fewer than "
            "%d; raise it (ulimit -n, or LimitNOFILE= in the systemd unit) to serve more",
            soft,
            hard,
            allowed,
            wanted - _SPARE_FILES,
            extra={"action": "relay_open_file_limit"},
        )
    return allowed


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (not on Windows): fan-out to many clients
    is mostly socket writes, which it does in C. None: asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def stdout_sink(out: TextIO, bar_id: UUID | None, relay: Relay) -> Sink:
    """One JSON line per event (of ``bar_id`` only, when given) and per reset,
    flushed at once.

    A closed stdout (the reader went away) stops the relay instead of
    raising inside it.
    """
    closed = False

    def write(item: Item) -> None:
        nonlocal closed
        if closed or (isinstance(item, StatusEvent) and bar_id not in (None, item.bar_id)):
            return
        try:
            out.write(item.line + "\n")
            out.flush()
        except BrokenPipeError:
            closed = True
            logger.warning("stdout was closed; stopping", extra={"action": "relay_stdout_closed"})
            relay.stop()

    return write


def listen_socket(
    host: str, port: int, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port), or ConfigError.

    ``reuse_port``: SO_REUSEPORT, so that several workers' sockets share the
    port and the kernel spreads new connections over them; ``listen`` False:
    only bound (a worker's parent holds the port that way, taking no
    connection itself).
    """
    sock: socket.socket | None = None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(4096)
    except OSError as exc:
        if sock is not None:
            sock.close()
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {netloc(host, port)}: {reason}") from exc
    sock.setblocking(False)
    return sock


def netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
