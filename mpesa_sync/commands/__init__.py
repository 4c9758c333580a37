"""Subcommands of `mpesa-sync`, and what they share: options, exit codes, formatting.

One module per command (``migrate`` holds ``rollback`` too), each imported
only when its command runs (``mpesa_sync.cli.COMMANDS``); so this module
imports click and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

# The documented exit codes (docs/operating.md, "Exit codes"). The library
# raises MpesaSyncError subclasses; only the CLI turns them into a code.
EXIT_OK = 0
EXIT_DRIFT = 1  # drift found, or a partial failure
EXIT_ERROR = 2  # bad input, unreachable database, schema not installed
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it

DSN_HELP = "libpq connection string or URL (env MPESA_SYNC_DSN)."

# The largest values numeric options take: what the database (or the code)
# can honour, checked before anything touches the database.
MAX_INTEGER = 2**31 - 1  # a PostgreSQL integer
MAX_BIGINT = 2**63 - 1  # a PostgreSQL bigint: event and alert ids


class FiniteRange(click.FloatRange):
    """A FloatRange that also refuses nan (inf is out of any bounded range)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def seconds(minimum: float, maximum: float, *, min_open: bool = True) -> FiniteRange:
    """Seconds above (or from) ``minimum`` up to ``maximum``, finite."""
    return FiniteRange(min=minimum, max=maximum, min_open=min_open)


def dsn_option(func: F) -> F:
    """--dsn, else MPESA_SYNC_DSN; a missing value is a one-line error."""
    return click.option(
        "--dsn",
        envvar="MPESA_SYNC_DSN",
        metavar="DSN",
        callback=lambda ctx, _param, value: require_dsn(ctx, value),
        help=DSN_HELP,
    )(func)


def require_dsn(ctx: click.Context, value: str | None) -> str:
    """The DSN, or a usage error naming both ways to give one."""
    if not value:
        raise click.UsageError("no database given: pass --dsn or set MPESA_SYNC_DSN", ctx)
    return value


def format_option(func: F) -> F:
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Output format.",
    )(func)


def flag(value: bool | None) -> str:
    """A nullable boolean as the JSON-ish word operators read: true, false, null."""
    return "null" if value is None else str(value).lower()
