"""Subcommands of `mpesa-sync`, and the options they share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def dsn_option(func: F) -> F:
    """--dsn, else MPESA_SYNC_DSN; a missing value is a one-line error."""
    return click.option(
        "--dsn",
        envvar="MPESA_SYNC_DSN",
        metavar="DSN",
        callback=_require_dsn,
        help="libpq connection string or URL (env MPESA_SYNC_DSN).",
    )(func)


def _require_dsn(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
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
