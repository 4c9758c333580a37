"""`mpesa-sync relay`: every status event on stdout, and over HTTP with --http."""

from __future__ import annotations

import asyncio
from uuid import UUID

import click

from mpesa_sync.commands import EXIT_OK, dsn_option
from mpesa_sync.relay import service as relay_service


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
    type=click.IntRange(min=0),
    metavar="EVENT_ID",
    help="Start after this event id (default: after the newest event).",
)
@click.option(
    "--bar", "bar_id", type=click.UUID, metavar="BAR_ID", help="Only this bar's events on stdout."
)
def relay(
    dsn: str, http_address: tuple[str, int] | None, since: int | None, bar_id: UUID | None
) -> int:
    """Relay every mpesa_status event: one JSON line per event on stdout.

    Never skips or repeats an event, reconnects (with backoff) whenever the
    database goes away, and stops cleanly on SIGINT/SIGTERM. Needs a direct
    or session-pooled connection: LISTEN does not work through PgBouncer in
    transaction mode.
    """
    with asyncio.Runner(loop_factory=relay_service.loop_factory()) as runner:
        runner.run(relay_service.serve(dsn, http=http_address, since=since, bar_id=bar_id))
    return EXIT_OK
