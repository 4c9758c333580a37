"""The `mpesa-sync` command.

Each subcommand is a small handler in ``mpesa_sync/commands/`` that calls the
library. This module owns what they share: logging to stderr, and one catch
that turns every failure into a single line and a documented exit code.

Exit codes: 0 ok; 1 drift found or partial failure; 2 error (bad input,
unreachable database, schema not installed).
"""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import click
import psycopg

from mpesa_sync import __version__
from mpesa_sync.commands import EXIT_ERROR, EXIT_OK
from mpesa_sync.commands import alerts as alerts_commands
from mpesa_sync.commands import migrate as migrate_commands
from mpesa_sync.commands import reconcile as reconcile_commands
from mpesa_sync.commands import relay as relay_commands
from mpesa_sync.commands import settings as settings_commands
from mpesa_sync.db import first_line
from mpesa_sync.errors import MpesaSyncError

logger = logging.getLogger("mpesa_sync")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mpesa-sync")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    envvar="MPESA_SYNC_LOG_LEVEL",
    help="Log level for messages on stderr (env MPESA_SYNC_LOG_LEVEL).",
)
def cli(log_level: str) -> None:
    """Keep bars.mpesa_enabled in step with mpesa_credentials, and watch it live.

    Every command takes --dsn, else reads MPESA_SYNC_DSN.
    Exit codes: 0 ok, 1 drift or partial failure, 2 error.
    """
    logging.basicConfig(
        stream=sys.stderr,
        level=log_level.upper(),
        format="mpesa-sync: %(levelname)s: %(message)s",
        force=True,
    )
    # yoyo narrates every statement at INFO; our own messages say what matters.
    logging.getLogger("yoyo").setLevel(max(logging.WARNING, logging.getLogger().level))


for command in (
    *migrate_commands.COMMANDS,
    *reconcile_commands.COMMANDS,
    *relay_commands.COMMANDS,
    *settings_commands.COMMANDS,
    *alerts_commands.COMMANDS,
):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the CLI; every failure ends as one line on stderr and an exit code."""
    try:
        code = cli.main(args=argv, prog_name="mpesa-sync", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.UsageError as exc:
        _fail(f"{exc.format_message()} (see mpesa-sync {_command_path(exc)}--help)", EXIT_ERROR)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        _fail("aborted", EXIT_ERROR)
    except MpesaSyncError as exc:
        _fail(str(exc), exc.exit_code)
    except psycopg.Error as exc:
        state = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
        _fail(f"database error: {first_line(exc)}{state}", EXIT_ERROR)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _command_path(exc: click.UsageError) -> str:
    if exc.ctx is None or exc.ctx.parent is None:
        return ""
    return exc.ctx.command_path.removeprefix("mpesa-sync").strip() + " "


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"mpesa-sync: error: {message}", err=True)
    sys.exit(code)
