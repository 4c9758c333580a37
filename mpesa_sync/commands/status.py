"""`mpesa-sync status`: the state of the install, for a person or a monitor."""

from __future__ import annotations

import json

import click

from mpesa_sync import status as status_api
from mpesa_sync.commands import EXIT_DRIFT, EXIT_ERROR, EXIT_OK, dsn_option, format_option


@click.command()
@dsn_option
@format_option
def status(dsn: str, output_format: str) -> int:
    """Report the install: migrations, event log, open alerts, host columns.

    Exit 0 when installed and current with no open alert, 1 when a migration
    is pending or an alert is open, 2 when not installed (or half-installed),
    when a host column is missing, or on error.
    """
    report = status_api.status(dsn)
    if output_format == "json":
        click.echo(json.dumps(report.as_dict()))
    else:
        _print_status(report)
    if not report.installed or report.missing_columns:
        return EXIT_ERROR
    if report.pending or report.open_alerts:
        return EXIT_DRIFT
    return EXIT_OK


def _print_status(report: status_api.StatusReport) -> None:
    state = (
        "current"
        if report.current
        else "pending migrations"
        if report.installed
        else "HALF-INSTALLED"
        if report.half_installed
        else "NOT INSTALLED"
    )
    click.echo(f"mpesa-sync {report.version}: {state}")
    if report.half_installed:
        click.echo(
            "schema mpesa_sync is here but yoyo has no record of installing it: an install "
            "was interrupted (through a transaction pooler?); `mpesa-sync migrate` on a "
            "direct address removes the leftover and installs afresh"
        )
    if report.history_in_public:
        click.echo(
            "yoyo's record of the install is in public, where the API roles may reach it; "
            "`mpesa-sync migrate` moves it to schema mpesa_sync_yoyo"
        )
    click.echo(
        f"migrations: {len(report.applied)} applied, {len(report.pending)} pending"
        + (f" ({', '.join(report.pending)})" if report.pending else "")
    )
    log = report.event_log
    if log is not None:
        kept = f"{log.oldest_event_id}..{log.newest_event_id}" if log.events else "none kept"
        click.echo(
            f"event log: {log.events} event(s) ({kept}), pruned through {log.pruned_through}, "
            f"generation {log.generation}"
        )
    if report.open_alerts is not None:
        click.echo(
            f"open alerts: {report.open_alerts}"
            + (" (see `mpesa-sync alerts`)" if report.open_alerts else "")
        )
    sink = report.realtime
    if sink is not None:
        if sink.enabled:
            click.echo(
                f"realtime broadcast: on ({sink.topics} topics), "
                f"{sink.failures} failed send(s), {sink.events_lost} event(s) not sent"
            )
        else:
            leftover = " (policies or state call left: run `mpesa-sync realtime disable`)"
            click.echo(
                "realtime broadcast: off" + (leftover if sink.policies or sink.state_call else "")
            )
    missing = report.missing_columns
    if missing:
        names = ", ".join(f"{c.table}.{c.column} ({c.type})" for c in missing)
        click.echo(f"host columns: MISSING {names}")
    else:
        click.echo(f"host columns: all {len(report.host_columns)} present")
