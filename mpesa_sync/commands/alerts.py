"""`mpesa-sync alerts [--all] [--format json]` and `mpesa-sync alerts ack ID`.

``alerts`` is a group that lists when called without a subcommand, so both
forms read naturally. ``--dsn`` is accepted before or after ``ack``.
"""

from __future__ import annotations

import json

import click

from mpesa_sync import alerts as alerts_api
from mpesa_sync import db
from mpesa_sync.commands import DSN_HELP, EXIT_OK, MAX_BIGINT, format_option, require_dsn


@click.group("alerts", invoke_without_command=True)
@click.option("--dsn", envvar="MPESA_SYNC_DSN", metavar="DSN", help=DSN_HELP)
@click.option("--all", "include_acknowledged", is_flag=True, help="Include acknowledged alerts.")
@format_option
@click.pass_context
def alerts(
    ctx: click.Context, dsn: str | None, include_acknowledged: bool, output_format: str
) -> int:
    """List open alerts (every alert with --all); `alerts ack ID` acknowledges one."""
    ctx.obj = {"dsn": dsn}
    if ctx.invoked_subcommand is not None:
        return EXIT_OK
    with db.connection(require_dsn(ctx, dsn)) as conn:
        db.require_schema(conn)
        found = alerts_api.list_alerts(conn, include_acknowledged=include_acknowledged)
    if output_format == "json":
        click.echo(json.dumps([a.as_dict() for a in found]))
        return EXIT_OK
    if not found:
        click.echo("no alerts" if include_acknowledged else "no open alerts")
    for a in found:
        state = "open"
        if a.acknowledged_at:
            state = f"acknowledged {a.acknowledged_at:%Y-%m-%d %H:%M:%S}"
        click.echo(
            f"{a.id:>6}  {a.created_at:%Y-%m-%d %H:%M:%S%z}  {a.kind:<22} "
            f"bar {a.bar_id or '-'}  {state}  {json.dumps(a.detail, sort_keys=True)}"
        )
    return EXIT_OK


@alerts.command("ack")
@click.argument("alert_id", metavar="ID", type=click.IntRange(min=1, max=MAX_BIGINT))
@click.option("--dsn", metavar="DSN", help=DSN_HELP)
@click.pass_context
def ack(ctx: click.Context, alert_id: int, dsn: str | None) -> int:
    """Acknowledge alert ID (an unknown id is an error, exit 2)."""
    # ack's own --dsn, else the group's (which falls back to MPESA_SYNC_DSN).
    # Not dsn_option on the group: its check would refuse `alerts --dsn X ack ID`
    # style calls before ack could fall back on the group's --dsn.
    dsn = require_dsn(ctx, dsn or ctx.obj["dsn"])
    with db.connection(dsn) as conn:
        db.require_schema(conn)
        alert, newly = alerts_api.acknowledge(conn, alert_id)
    when = f"{alert.acknowledged_at:%Y-%m-%d %H:%M:%S%z}"
    click.echo(
        f"acknowledged alert {alert.id}"
        if newly
        else f"alert {alert.id} was already acknowledged at {when}"
    )
    return EXIT_OK
