"""The live part of `make demo`: the relay, the customer's page, a bar that flips.

Settings (environment): DEMO_HTTP (HOST:PORT for the relay, default
127.0.0.1:8765), DEMO_FLIP_SECONDS (default 3), DEMO_SECONDS (stop after this
long; default: until Ctrl-C).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from uuid import UUID

import click
import psycopg

from devtools.queries import query


def run_live(dsn: str, bar_id: UUID, bar_name: str, step: Callable[[str], None]) -> bool:
    """Start `mpesa-sync relay --http`, print the page's URL, flip ``bar_id`` until stopped.

    True when the relay started, relayed every flip and stopped cleanly (so
    that CI can tell a demo that worked from one that only printed).
    """
    http = os.environ.get("DEMO_HTTP", "127.0.0.1:8765")
    every = float(os.environ.get("DEMO_FLIP_SECONDS", "3"))
    limit = os.environ.get("DEMO_SECONDS")
    step(f"mpesa-sync relay --http {http}: every change, live, to services and browsers")
    relay = subprocess.Popen(
        [sys.executable, "-m", "mpesa_sync", "relay", "--dsn", dsn, "--http", http],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        start_new_session=True,  # Ctrl-C reaches us; we stop the relay ourselves
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(relay.stdout, lines), daemon=True).start()
    try:
        url = _wait_until_serving(relay)
        if url is None:
            return False
        click.echo(f"  customer page:  {url}/?bar_id={bar_id}   ({bar_name})")
        click.echo(f"  SSE stream:     curl -N {url}/events")
        click.echo(f"  health:         curl {url}/healthz")
        click.echo(
            f"  flipping {bar_name}'s M-Pesa every {every:g} s; "
            + ("Ctrl-C to stop" if limit is None else f"stopping after {limit} s")
        )
        missed = _flip(dsn, bar_id, bar_name, every, float(limit) if limit else None, lines)
    finally:
        if relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
        code = relay.wait(30)
    return missed == 0 and code == 0


def _flip(
    dsn: str,
    bar_id: UUID,
    bar_name: str,
    every: float,
    limit: float | None,
    lines: queue.Queue[str],
) -> int:
    """Flip until the deadline (or Ctrl-C); returns how many flips the relay missed."""
    deadline = None if limit is None else time.monotonic() + limit
    active = True
    missed = 0
    with psycopg.connect(dsn, autocommit=True) as staff:
        try:
            while deadline is None or time.monotonic() < deadline:
                staff.execute(query("demo_set_active"), {"active": active, "bar_id": bar_id})
                click.echo(f"  staff turn {bar_name}'s M-Pesa {'on' if active else 'off'}")
                try:
                    click.echo(f"    relay stdout: {lines.get(timeout=10)}")
                except queue.Empty:
                    missed += 1
                    click.echo("    (no event from the relay within 10 s)")
                active = not active
                time.sleep(every)  # pacing for a person watching, not synchronisation
        except KeyboardInterrupt:
            click.echo()
    return missed


def _wait_until_serving(relay: subprocess.Popen[str]) -> str | None:
    assert relay.stderr is not None
    url = None
    for line in relay.stderr:
        if "serving " in line:
            url = line.split("serving ", 1)[1].split("/ ", 1)[0].rstrip("/")
        if "listening on mpesa_status" in line:
            # Keep draining its log so that it never blocks on a full pipe.
            threading.Thread(target=relay.stderr.read, daemon=True).start()
            return url
        if line.startswith("mpesa-sync: error:"):
            click.echo(f"  the relay did not start: {line.strip()}")
            click.echo("  (set DEMO_HTTP=127.0.0.1:PORT to use another port)")
            return None
    return None


def _pump(stream: object, sink: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.put(line.rstrip("\n"))
