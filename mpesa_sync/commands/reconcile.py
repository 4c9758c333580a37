"""`mpesa-sync verify` and `mpesa-sync reconcile`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from mpesa_sync import reconcile as reconciling
from mpesa_sync import verify as verifying
from mpesa_sync.commands import EXIT_DRIFT, EXIT_OK, dsn_option, flag, format_option


@click.command()
@dsn_option
@format_option
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="List at most N drifted bars (0: all); the total is always reported.",
)
@click.option(
    "--prometheus-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the figures for node_exporter's textfile collector (atomically).",
)
def verify(dsn: str, output_format: str, limit: int, prometheus_file: Path | None) -> int:
    """Check every bar, read-only. Exit 0 consistent, 1 drift found, 2 error."""
    report = verifying.verify(dsn, limit=limit or None)
    if prometheus_file is not None:
        verifying.write_prometheus(report, prometheus_file)
    if output_format == "json":
        click.echo(json.dumps(report.as_dict()))
    else:
        _print_verify(report)
    return EXIT_OK if report.consistent else EXIT_DRIFT


def _print_verify(report: verifying.VerifyReport) -> None:
    if report.consistent:
        click.echo(f"consistent: {report.checked} bars checked, none drifted")
        return
    click.echo(f"drift: {report.drifted_total} of {report.checked} bars drifted")
    for bar in report.drifted:
        click.echo(
            f"  {bar.bar_id}  mpesa_enabled={flag(bar.mpesa_enabled)}"
            f"  expected={flag(bar.expected)}"
        )
    if report.truncated:
        click.echo(
            f"  ... and {report.drifted_total - len(report.drifted)} more "
            "(--limit 0 lists every one)"
        )
    click.echo("run `mpesa-sync reconcile` to fix them")


@click.command()
@dsn_option
@click.option("--dry-run", is_flag=True, help="Report the drift and change nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=reconciling.DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Bars fixed per transaction.",
)
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=reconciling.DEFAULT_LOCK_TIMEOUT,
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
    report = reconciling.reconcile(
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


def _print_reconcile(report: reconciling.ReconcileReport) -> None:
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
        click.echo(f"  {bar.bar_id}  refused: {bar.error} (SQLSTATE {bar.sqlstate})")
    if report.consistent:
        click.echo("consistent")
    else:
        click.echo(f"{report.remaining} bar(s) still drifted; see `mpesa-sync verify`")


COMMANDS = (verify, reconcile)
