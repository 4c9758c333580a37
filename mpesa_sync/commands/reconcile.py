"""`mpesa-sync reconcile`: fix every drifted bar, then check again."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from mpesa_sync import db, reconciliation
from mpesa_sync.commands import (
    EXIT_DRIFT,
    EXIT_OK,
    MAX_INTEGER,
    dsn_option,
    format_option,
    seconds,
)
from mpesa_sync.errors import with_sqlstate


@click.command()
@dsn_option
@click.option("--dry-run", is_flag=True, help="Report the drift and change nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=MAX_INTEGER),
    default=reconciliation.DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Bars fixed per transaction.",
)
@click.option(
    "--lock-timeout",
    type=seconds(0, db.MAX_LOCK_TIMEOUT),
    default=reconciliation.DEFAULT_LOCK_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="How long a batch waits for a row lock before that bar is reported.",
)
@format_option
def reconcile(
    dsn: str, dry_run: bool, batch_size: int, lock_timeout: float, output_format: str
) -> int:
    """Fix every drifted bar, then check again.

    Exit 0 when consistent afterwards, 1 when a bar refused its fix (or, with
    --dry-run, when drift was found), 2 on error.
    """
    show_progress = output_format == "text" and not dry_run and sys.stderr.isatty()
    report = reconciliation.reconcile(
        dsn,
        batch_size=batch_size,
        lock_timeout=lock_timeout,
        dry_run=dry_run,
        progress=_progress_bar if show_progress else None,
    )
    if output_format == "json":
        click.echo(json.dumps(report.as_dict()))
    else:
        _print_reconcile(report)
    return EXIT_OK if report.ok else EXIT_DRIFT


@contextmanager
def _progress_bar(total: int) -> Iterator[Callable[[int], object]]:
    with click.progressbar(length=total, label="fixing drifted bars", file=sys.stderr) as bar:
        yield bar.update


def _print_reconcile(report: reconciliation.ReconcileReport) -> None:
    if report.dry_run:
        click.echo(
            f"dry run: {report.drifted} of {report.checked} bars drifted; "
            "nothing changed (`mpesa-sync verify` lists them)"
        )
        return
    click.echo(
        f"checked {report.checked} bars: {report.drifted} drifted, "
        f"{report.fixed} fixed, {len(report.failed)} refused"
    )
    for bar in report.failed:
        click.echo(f"  {bar.bar_id}  " + with_sqlstate(f"refused: {bar.error}", bar.sqlstate))
    if report.consistent:
        click.echo("consistent")
    else:
        click.echo(f"{report.remaining} bar(s) still drifted; see `mpesa-sync verify`")
