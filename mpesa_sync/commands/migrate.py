"""`mpesa-sync migrate`, `mpesa-sync rollback` and `mpesa-sync migrations-dir`."""

from __future__ import annotations

import json

import click

from mpesa_sync import migrations
from mpesa_sync.commands import EXIT_DRIFT, EXIT_OK, MAX_INTEGER, dsn_option, format_option
from mpesa_sync.resources import resource_dir


@click.command()
@dsn_option
@click.option(
    "--create-tables",
    is_flag=True,
    help="Create bars and mpesa_credentials if the database has neither (a new database).",
)
@format_option
def migrate(dsn: str, create_tables: bool, output_format: str) -> int:
    """Apply the pending migrations. A second run is a no-op.

    Exits 1 when the install left bars it could not fix (see `mpesa-sync alerts`).
    Needs a direct or session-pooled connection: through a transaction pooler
    (Supabase's port 6543) it exits 2 before it changes anything.
    """
    report = migrations.migrate(dsn, create_tables=create_tables)
    if output_format == "json":
        click.echo(json.dumps(report.as_dict()))
    elif report.applied:
        click.echo(f"applied {len(report.applied)} migration(s): {', '.join(report.applied)}")
        if report.fixed:
            click.echo(
                f"fixed {report.fixed} bar(s) that had drifted "
                "(each has a status event with source 'reconcile')"
            )
    else:
        click.echo("already up to date")
    if report.refused and output_format == "text":
        click.echo(
            f"{len(report.refused)} bar(s) refused their status fix and were left as they are; "
            "see `mpesa-sync alerts`",
            err=True,
        )
    return EXIT_DRIFT if report.refused else EXIT_OK


@click.command()
@dsn_option
@click.option(
    "--steps", type=click.IntRange(min=1, max=MAX_INTEGER), help="How many migrations to undo."
)
@click.option("--all", "undo_all", is_flag=True, help="Undo every migration.")
def rollback(dsn: str, steps: int | None, undo_all: bool) -> int:
    """Undo the newest migration (or --steps N, or --all).

    On a database without an install (a wrong DSN, most likely) it exits 2
    and creates nothing; so it does through a transaction pooler, like migrate.
    """
    if steps and undo_all:
        raise click.UsageError("give --steps or --all, not both")
    undone = migrations.rollback(dsn, count=None if undo_all else (steps or 1))
    click.echo(f"rolled back {len(undone)} migration(s): {', '.join(undone) or '-'}")
    return EXIT_OK


@click.command("migrations-dir")
def migrations_dir() -> int:
    """Print the folder of the packaged migrations, for yoyo."""
    click.echo(str(resource_dir("migrations")))
    return EXIT_OK
