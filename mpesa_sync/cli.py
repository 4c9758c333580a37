"""The `mpesa-sync` command.

Each subcommand is a small handler in ``mpesa_sync/commands/`` that calls the
library. A handler's module is imported only when that command runs (see
:data:`COMMANDS`): ``mpesa-sync --help`` loads click and nothing of the
library, and ``verify`` never loads the relay's web stack or yoyo.

This module owns what the commands share: logging to stderr, and the one
catch that turns every failure into a single line and an exit code. The exit
codes live here and in :mod:`mpesa_sync.commands`, never in the library.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import NamedTuple, NoReturn

import click

from mpesa_sync import __version__
from mpesa_sync.commands import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK
from mpesa_sync.errors import MpesaSyncError

logger = logging.getLogger("mpesa_sync")


class LazyCommand(NamedTuple):
    module: str
    attribute: str
    # What `mpesa-sync --help` lists, so that listing imports no command; it is
    # the first sentence of the command's docstring (tests/units/test_cli.py).
    summary: str


COMMANDS = {
    "alerts": LazyCommand(
        "mpesa_sync.commands.alerts",
        "alerts",
        "List open alerts (every alert with --all); `alerts ack ID` acknowledges one.",
    ),
    "migrate": LazyCommand(
        "mpesa_sync.commands.migrate", "migrate", "Apply the pending migrations."
    ),
    "migrations-dir": LazyCommand(
        "mpesa_sync.commands.migrate",
        "migrations_dir",
        "Print the folder of the packaged migrations, for yoyo.",
    ),
    "prune": LazyCommand(
        "mpesa_sync.commands.prune",
        "prune",
        "Delete status events older than --older-than, and alerts acknowledged before it.",
    ),
    "realtime": LazyCommand(
        "mpesa_sync.commands.realtime",
        "realtime_group",
        "Broadcast each status change through Supabase Realtime, with a state call for the app.",
    ),
    "reconcile": LazyCommand(
        "mpesa_sync.commands.reconcile", "reconcile", "Fix every drifted bar, then check again."
    ),
    "relay": LazyCommand(
        "mpesa_sync.commands.relay",
        "relay",
        "Relay every mpesa_status event: one JSON line per event on stdout.",
    ),
    "rollback": LazyCommand(
        "mpesa_sync.commands.migrate",
        "rollback",
        "Undo the newest migration (or --steps N, or --all).",
    ),
    "settings": LazyCommand(
        "mpesa_sync.commands.settings",
        "settings_group",
        "Save, show and check a bar's M-Pesa credentials.",
    ),
    "status": LazyCommand(
        "mpesa_sync.commands.status",
        "status",
        "Report the install: migrations, event log, open alerts, host columns.",
    ),
    "verify": LazyCommand("mpesa_sync.commands.verify", "verify", "Check every bar, read-only."),
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when the command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        command: click.Command = getattr(importlib.import_module(entry.module), entry.attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own layout, from the summaries rather than the real commands:
        # a stand-in command shortens each summary the way click would.
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [
            (name, click.Command(name, help=COMMANDS[name].summary).get_short_help_str(limit))
            for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
        # One line for the operator; with --log-level debug, the whole chain
        # down to the driver's error.
        logger.debug("%s failed", type(exc).__name__, exc_info=exc)
        _fail(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _command_path(exc: click.UsageError) -> str:
    if exc.ctx is None or exc.ctx.parent is None:
        return ""
    return exc.ctx.command_path.removeprefix("mpesa-sync").strip() + " "


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"mpesa-sync: error: {message}", err=True)
    sys.exit(code)
