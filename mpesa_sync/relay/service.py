"""`mpesa-sync relay` as a process: stdout lines, optional HTTP, signals.

One :class:`~mpesa_sync.relay.listener.Relay` feeds both the JSON lines on stdout and,
with an HTTP address, the Starlette app served by uvicorn. SIGINT and SIGTERM
stop both cleanly: the relay closes its subscriptions, which ends every SSE
stream, and uvicorn then shuts down. A reset is one JSON line on stdout too,
``{"reset": true, ...}``, whatever ``--bar`` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Callable, Collection, Iterator
from typing import TextIO
from uuid import UUID

import uvicorn

from mpesa_sync.errors import ConfigError
from mpesa_sync.relay.app import create_app
from mpesa_sync.relay.events import Position, StatusEvent
from mpesa_sync.relay.listener import Item, Relay, RelayConfig, Sink

logger = logging.getLogger(__name__)

_STOP_GRACE = 5.0  # seconds a stopping relay or server gets before it is cancelled


async def serve(
    dsn: str,
    *,
    http: tuple[str, int] | None = None,
    since: Position | None = None,
    bar_id: UUID | None = None,
    out: TextIO = sys.stdout,
    config: RelayConfig | None = None,
    allow_origins: Collection[str] = (),
    max_clients: int | None = None,
) -> None:
    """Relay until SIGINT/SIGTERM.

    Raises (before anything is relayed) DatabaseUnavailable, SchemaNotInstalled
    or ConfigError for a bad start: an unreachable database, a ``since`` the
    log cannot honour, an address it cannot listen on.
    """
    sock = listen_socket(*http) if http else None
    relay = Relay(dsn, since=since, config=config)
    try:
        await relay.start()
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    relay.add_sink(stdout_sink(out, bar_id, relay))
    # uvicorn narrates its start-up and shutdown at INFO; ours say what matters.
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, logging.root.level))

    loop = asyncio.get_running_loop()
    server: uvicorn.Server | None = None

    def request_stop() -> None:
        relay.stop()
        if server is not None:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop)
    try:
        tasks = [asyncio.create_task(relay.run(), name="relay")]
        if sock is not None:
            server = _Server(
                uvicorn.Config(
                    create_app(relay, dsn, allow_origins=allow_origins, max_clients=max_clients),
                    log_config=None,
                    access_log=False,
                    lifespan="on",
                    timeout_graceful_shutdown=int(_STOP_GRACE),
                )
            )
            tasks.append(asyncio.create_task(server.serve(sockets=[sock]), name="http"))
            host, port = sock.getsockname()[:2]
            logger.info(
                "serving http://%s/ (SSE at /events)",
                _netloc(host, port),
                extra={"action": "http_listening"},
            )
        # Either task ending (a stop, or a failure such as a closed stdout)
        # stops the other.
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        request_stop()
        _, pending = await asyncio.wait(tasks, timeout=_STOP_GRACE)
        for task in pending:
            task.cancel()
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if sock is not None:
            sock.close()


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


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port), or ConfigError."""
    sock: socket.socket | None = None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        if sock is not None:
            sock.close()
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {_netloc(host, port)}: {reason}") from exc
    sock.setblocking(False)
    return sock


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: serve() stops both parts."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
