"""`mpesa-sync verify`: check every bar, read-only."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mpesa_sync import verification
from mpesa_sync.commands import EXIT_DRIFT, EXIT_OK, MAX_INTEGER, dsn_option, flag, format_option


@click.command()
@dsn_option
@format_option
@click.option(
    "--limit",
    type=click.IntRange(min=0, max=MAX_INTEGER),
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
    report = verification.verify(dsn, limit=limit or None)
    if prometheus_file is not None:
        verification.write_prometheus(report, prometheus_file)
    if output_format == "json":
        click.echo(json.dumps(report.as_dict()))
    else:
        _print_verify(report)
    return EXIT_OK if report.consistent else EXIT_DRIFT


def _print_verify(report: verification.VerifyReport) -> None:
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
