"""`mpesa-sync relay`: every status event on stdout, and over HTTP with --http."""

from __future__ import annotations

import asyncio
import re
import sys
from uuid import UUID

import click

from mpesa_sync.commands import EXIT_OK, dsn_option
from mpesa_sync.pooler import require_session
from mpesa_sync.relay import service as relay_service
from mpesa_sync.relay.events import Position

MAX_CLIENTS = 1_000_000
MAX_WORKERS = 256


class HostPort(click.ParamType[tuple[str, int]]):
    """HOST:PORT, with [::1]:PORT for IPv6; port 0 picks a free port."""

    name = "HOST:PORT"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        text = str(value)
        host, sep, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            self.fail(f"{text!r} is not HOST:PORT (for example 127.0.0.1:8080)", param, ctx)
        return host, int(port)


class EventPosition(click.ParamType[Position]):
    """EVENT_ID, or GENERATION:EVENT_ID as SSE ids and reset lines carry it."""

    name = "EVENT_ID"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Position:
        if isinstance(value, Position):
            return value
        try:
            return Position.parse(str(value))
        except ValueError:
            self.fail(f"{str(value)[:80]!r} is not EVENT_ID or GENERATION:EVENT_ID", param, ctx)


class Origin(click.ParamType[str]):
    """A web origin, scheme://host[:port], as a browser sends it (lowercased)."""

    name = "ORIGIN"
    _ORIGIN = re.compile(r"https?://(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:]+\])(?::[0-9]{1,5})?")

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        text = str(value).lower()
        if not self._ORIGIN.fullmatch(text):
            self.fail(
                f"{str(value)[:80]!r} is not an origin: scheme://host[:port] with no path, "
                "for example https://app.example.com",
                param,
                ctx,
            )
        return text


@click.command()
@dsn_option
@click.option(
    "--http",
    "http_address",
    type=HostPort(),
    metavar="HOST:PORT",
    help="Also serve SSE (/events), payment options, /healthz and the page here.",
)
@click.option(
    "--since",
    type=EventPosition(),
    metavar="EVENT_ID",
    help="Start after this event, EVENT_ID or GENERATION:EVENT_ID (default: after the "
    "newest event); a position the log cannot honour is an error.",
)
@click.option(
    "--bar", "bar_id", type=click.UUID, metavar="BAR_ID", help="Only this bar's events on stdout."
)
@click.option(
    "--allow-origin",
    "allow_origins",
    type=Origin(),
    multiple=True,
    metavar="ORIGIN",
    help="Let pages of this origin read /events and payment options (CORS); repeatable. "
    "Default: no cross-origin access.",
)
@click.option(
    "--max-clients",
    type=click.IntRange(min=1, max=MAX_CLIENTS),
    metavar="N",
    help="Serve at most N SSE streams at once (per worker); past that, 503 with Retry-After.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=MAX_WORKERS),
    default=1,
    show_default=True,
    metavar="N",
    help="Serve HTTP from N processes on one port (SO_REUSEPORT), each with its own LISTEN.",
)
# Set by --workers on each worker it starts: I/N.
@click.option("--worker", "worker", metavar="I/N", hidden=True)
def relay(
    dsn: str,
    http_address: tuple[str, int] | None,
    since: Position | None,
    bar_id: UUID | None,
    allow_origins: tuple[str, ...],
    max_clients: int | None,
    workers: int,
    worker: str | None,
) -> int:
    """Relay every mpesa_status event: one JSON line per event on stdout.

    Never skips or repeats an event, reconnects (with backoff) whenever the
    database goes away, and stops cleanly on SIGINT/SIGTERM. Needs a direct
    or session-pooled connection: LISTEN does not work through PgBouncer in
    transaction mode.

    When its position cannot be honoured (the log was pruned past it,
    replaced or restored) it resets: one line on stderr, one JSON line
    {"reset": true, ...} on stdout, a reset frame to every SSE client; then
    it carries on live.
    """
    if not http_address and (allow_origins or max_clients or workers > 1 or worker):
        raise click.UsageError("--allow-origin, --max-clients and --workers need --http")
    require_session(dsn, "mpesa-sync relay")
    if workers > 1:
        from mpesa_sync.relay.workers import Workers

        args = [*(["--bar", str(bar_id)] if bar_id else [])]
        args += [a for origin in allow_origins for a in ("--allow-origin", origin)]
        args += ["--max-clients", str(max_clients)] if max_clients else []
        assert http_address is not None
        parent = Workers(dsn, http_address, workers, args, str(since) if since else None)
        return parent.run()
    sock, labels = None, None
    if worker is not None:
        from mpesa_sync.relay.workers import parse_worker

        assert http_address is not None
        index, count = parse_worker(worker)
        sock = relay_service.listen_socket(*http_address, reuse_port=True)
        labels = {"worker": str(index), "workers": str(count)}
    with asyncio.Runner(loop_factory=relay_service.loop_factory()) as runner:
        runner.run(
            relay_service.serve(
                dsn,
                http=http_address,
                since=since,
                bar_id=bar_id,
                allow_origins=allow_origins,
                max_clients=max_clients,
                sock=sock,
                out=None if labels and labels["worker"] != "0" else sys.stdout,
                labels=labels,
            )
        )
    return EXIT_OK
