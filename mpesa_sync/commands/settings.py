"""`mpesa-sync settings set|show|check`: a bar's M-Pesa settings from the command line.

Secrets never come from arguments (they would sit in shell history and in
``ps``): ``settings set`` reads them from environment variables, else asks
for them with a hidden prompt on a terminal.
"""

from __future__ import annotations

import json
import os
import sys
import uuid

import click

from mpesa_sync import credentials, daraja, db
from mpesa_sync.commands import EXIT_DRIFT, EXIT_OK, dsn_option, flag, format_option, seconds
from mpesa_sync.crypto import CredentialCipher
from mpesa_sync.errors import ConfigError

# (argument of save_settings, environment variable, prompt)
SECRET_SOURCES = (
    ("consumer_key", "MPESA_SYNC_CONSUMER_KEY", "Consumer key"),
    ("consumer_secret", "MPESA_SYNC_CONSUMER_SECRET", "Consumer secret"),
    ("passkey", "MPESA_SYNC_PASSKEY", "Passkey"),
)

_bar_option = click.option(
    "--bar", "bar_id", type=click.UUID, required=True, metavar="ID", help="The bar's id (bars.id)."
)


@click.group("settings")
def settings_group() -> None:
    """Save, show and check a bar's M-Pesa credentials."""


@settings_group.command("set")
@dsn_option
@_bar_option
@click.option("--environment", type=click.Choice(credentials.ENVIRONMENTS), required=True)
@click.option(
    "--shortcode", required=True, help="Business shortcode (PayBill or Till), 5-7 digits."
)
@click.option(
    "--active/--inactive",
    "active",
    default=None,
    help="Turn M-Pesa on or off with these credentials (one is required).",
)
@format_option
def set_settings(
    dsn: str,
    bar_id: uuid.UUID,
    environment: str,
    shortcode: str,
    active: bool | None,
    output_format: str,
) -> int:
    """Save one environment's credentials for a bar and sync its status, atomically.

    The secrets come from MPESA_SYNC_CONSUMER_KEY, MPESA_SYNC_CONSUMER_SECRET
    and MPESA_SYNC_PASSKEY, else from a hidden prompt; they are encrypted with
    MPESA_SYNC_ENCRYPTION_KEY before they leave this process.
    """
    if active is None:
        raise click.UsageError("give --active or --inactive")
    cipher = CredentialCipher.from_env()  # before asking for secrets it could not store
    secrets = {name: _read_secret(envvar, label) for name, envvar, label in SECRET_SOURCES}
    result = credentials.save_settings(
        dsn,
        bar_id,
        environment,
        shortcode,
        secrets["consumer_key"],
        secrets["consumer_secret"],
        secrets["passkey"],
        active,
        cipher=cipher,
    )
    if output_format == "json":
        click.echo(json.dumps(result.as_dict()))
    else:
        click.echo(
            f"saved {result.environment} credentials for bar {result.bar_id} "
            f"({'active' if result.is_active else 'inactive'}); "
            f"mpesa_enabled is now {flag(result.mpesa_enabled)}"
        )
    return EXIT_OK


@settings_group.command("show")
@dsn_option
@_bar_option
@format_option
def show_settings(dsn: str, bar_id: uuid.UUID, output_format: str) -> int:
    """Print a bar's M-Pesa status and credential rows, without any secret."""
    with db.connection(dsn) as conn:
        db.require_schema(conn)
        state = credentials.read_settings(conn, bar_id)
    if output_format == "json":
        click.echo(json.dumps(state.as_dict()))
        return EXIT_OK
    sync = "in sync" if state.in_sync else f"drifted, expected {flag(state.expected)}"
    click.echo(f"bar {state.bar_id}: mpesa_enabled {flag(state.mpesa_enabled)} ({sync})")
    if not state.credentials:
        click.echo("  no credentials")
    for c in state.credentials:
        present = ", ".join(
            f"{name} {'set' if has else 'MISSING'}"
            for name, has in (
                ("key", c.has_consumer_key),
                ("secret", c.has_consumer_secret),
                ("passkey", c.has_passkey),
            )
        )
        updated = c.updated_at.isoformat(timespec="seconds") if c.updated_at else "-"
        click.echo(
            f"  {c.environment:<10} shortcode {c.business_shortcode:<8} "
            f"{'active' if c.is_active else 'inactive':<8} {present}; updated {updated}"
        )
    return EXIT_OK


@settings_group.command("check")
@dsn_option
@_bar_option
@click.option(
    "--environment",
    type=click.Choice(credentials.ENVIRONMENTS),
    help="Check only this environment's credentials (default: every row).",
)
@click.option(
    "--daraja-url",
    envvar=daraja.BASE_URL_ENV,
    metavar="URL",
    help="Daraja base URL for every environment (env MPESA_SYNC_DARAJA_URL); "
    "default: Safaricom's sandbox or production URL.",
)
@click.option(
    "--timeout",
    type=seconds(0.1, 600, min_open=False),
    default=10.0,
    show_default=True,
    help="Seconds to wait for Daraja.",
)
@format_option
def check_settings(
    dsn: str,
    bar_id: uuid.UUID,
    environment: str | None,
    daraja_url: str | None,
    timeout: float,
    output_format: str,
) -> int:
    """Try Daraja's OAuth call with the bar's stored key and secret.

    Exits 0 when Daraja accepts every checked row, 1 when it rejects one,
    2 when it cannot be reached.
    """
    cipher = CredentialCipher.from_env()
    with db.connection(dsn) as conn:
        db.require_schema(conn)
        results = daraja.check_settings(
            conn,
            bar_id,
            cipher=cipher,
            environment=environment,
            base_url=daraja_url,
            timeout=timeout,
        )
    if output_format == "json":
        click.echo(
            json.dumps(
                {
                    "bar_id": str(bar_id),
                    "ok": all(r.ok for r in results),
                    "checks": [r.as_dict() for r in results],
                }
            )
        )
    else:
        for r in results:
            verdict = "accepted" if r.ok else "REJECTED"
            click.echo(
                f"{r.environment}: {verdict} by {r.base_url} (HTTP {r.status_code}): {r.message}"
            )
    return EXIT_OK if all(r.ok for r in results) else EXIT_DRIFT


def _read_secret(envvar: str, label: str) -> str:
    value = os.environ.get(envvar)
    if value:
        return value
    if not sys.stdin.isatty():
        raise ConfigError(
            f"{label.lower()} missing: set {envvar}, or run on a terminal to be asked for it"
        )
    return str(click.prompt(label, hide_input=True))
