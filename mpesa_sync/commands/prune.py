"""`mpesa-sync prune`: delete old status events and acknowledged alerts, in batches."""

from __future__ import annotations

import json
from datetime import timedelta

import click

from mpesa_sync import retention
from mpesa_sync.commands import EXIT_OK, dsn_option, format_option


class Age(click.ParamType[timedelta]):
    """A duration: a whole number and s, m, h or d (30d)."""

    name = "AGE"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return retention.parse_duration(str(value))
        except ValueError as exc:
            self.fail(f"{str(value)[:40]!r}: {exc}", param, ctx)


@click.command()
@dsn_option
@click.option(
    "--older-than",
    type=Age(),
    required=True,
    metavar="AGE",
    help="Prune what is older than this: 30d, 12h, 90m or 45s.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be pruned; change nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=retention.MAX_BATCH_SIZE),
    default=retention.DEFAULT_BATCH_SIZE,
    show_default=True,
    metavar="N",
    help="Events (and alerts) deleted per transaction.",
)
@format_option
def prune(
    dsn: str, older_than: timedelta, dry_run: bool, batch_size: int, output_format: str
) -> int:
    """Delete status events older than --older-than, and alerts acknowledged before it.

    Events go oldest first; an alert goes only once acknowledged, never while
    open. Each batch is its own short transaction, safe beside writers and
    relays; a relay or client whose position was pruned gets a reset.
    """
    report = retention.prune(dsn, older_than, batch_size=batch_size, dry_run=dry_run)
    if output_format == "json":
        click.echo(json.dumps(report.as_dict()))
        return EXIT_OK
    verb = "would prune" if dry_run else "pruned"
    oldest = report.oldest_event_id
    click.echo(
        f"{verb} {report.events_deleted} event(s) and {report.alerts_deleted} acknowledged "
        f"alert(s) older than {retention.format_duration(older_than)}; "
        + (
            f"the oldest event {'would be' if dry_run else 'is now'} {oldest}"
            if oldest is not None
            else f"no event {'would be' if dry_run else 'is'} left"
        )
    )
    return EXIT_OK
