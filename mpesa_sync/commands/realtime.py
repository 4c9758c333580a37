"""`mpesa-sync realtime enable [--public]` and `mpesa-sync realtime disable`."""

from __future__ import annotations

import json

import click

from mpesa_sync import realtime as realtime_api
from mpesa_sync.commands import EXIT_OK, dsn_option, format_option


@click.group("realtime")
def realtime_group() -> None:
    """Broadcast each status change through Supabase Realtime, with a state call for the app."""


@realtime_group.command()
@dsn_option
@click.option(
    "--public",
    "public",
    is_flag=True,
    help="Public topics: any client may subscribe, without the RLS check (default: private).",
)
@format_option
def enable(dsn: str, public: bool, output_format: str) -> int:
    """Turn the broadcast sink on (again): the sink, its RLS policies, public.mpesa_status.

    Exit 2, changing nothing, on a database without realtime.send or when the
    role lacks a right the sink needs (the message names it).
    """
    status = realtime_api.enable(dsn, public=public)
    if output_format == "json":
        click.echo(json.dumps(status.as_dict()))
    else:
        click.echo(
            f"realtime broadcast: on ({status.topics} topics mpesa_status:<bar_id>); "
            "state call public.mpesa_status(uuid)"
        )
    return EXIT_OK


@realtime_group.command()
@dsn_option
def disable(dsn: str) -> int:
    """Remove the broadcast sink, its RLS policies and public.mpesa_status."""
    was_on = realtime_api.disable(dsn)
    click.echo("realtime broadcast: off" + ("" if was_on else " (it was not on)"))
    return EXIT_OK
