"""`mpesa-sync relay --workers N`: N processes on one port, each its own
LISTEN; every client gets every event once, whichever worker serves it, and
across a worker killed and started again.

Real processes and a real server; every wait has a deadline.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import httpx

from tests.support.database import Database
from tests.support.relay import (
    RelayProcess,
    SseReader,
    log_state,
    new_events,
    newest_event_id,
    set_active,
    strip_at,
)
from tests.support.waiting import wait_for

WORKER = "x-relay-worker"


def readers_on_every_worker(url: str, workers: set[str], **kwargs: Any) -> list[SseReader]:
    """SSE readers, opened until the kernel has handed one to each worker."""
    readers: list[SseReader] = []
    while {r.headers.get(WORKER) for r in readers} != workers:
        assert len(readers) < 60, "SO_REUSEPORT never reached every worker"
        readers.append(SseReader(f"{url}/events", **kwargs))
        assert readers[-1].status == 200
    return readers


def test_each_event_reaches_each_client_once_across_workers_and_a_restarted_one(
    db: Database,
) -> None:
    bar = db.add_bar()
    db.add_credentials(bar, active=False)
    start = newest_event_id(db)
    with RelayProcess(db.dsn, "--http", "127.0.0.1:0", "--workers", "2") as relay:
        pids = {}
        for _ in range(2):
            found = relay.wait_log(r"worker (\d)/2 started \(pid (\d+)\)")
            pids[found[1]] = int(found[2])
        url = relay.http_url()
        relay.wait_listening()
        relay.wait_listening()
        readers = readers_on_every_worker(url, {"0", "1"})
        try:
            for active in (True, False, True):
                set_active(db, bar, active)
            first = list(range(start + 1, start + 4))
            for reader in readers:  # each exactly once, in order, whichever worker
                assert [e["id"] for e in reader.take(3)] == first
            # stdout: worker 0's lines, once
            assert strip_at(relay.events(3)) == new_events(db, start)

            os.kill(pids["1"], signal.SIGKILL)
            relay.wait_log(r"worker 1/2 exited \(signal 9\); starting it again")
            set_active(db, bar, False)  # committed while worker 1 is away
            set_active(db, bar, True)
            restarted = relay.wait_log(r"worker 1/2 started \(pid (\d+)\)")
            assert int(restarted[1]) != pids["1"]
            relay.wait_listening()
            generation = log_state(db)["generation"]
            moved = []
            for reader in readers:
                if reader.headers[WORKER] == "1":  # its stream ended with the worker
                    reader.close()
                    # as an EventSource does: reconnect with the last id it had
                    resume = {"Last-Event-ID": f"{generation}:{first[-1]}"}
                    moved.append(SseReader(f"{url}/events", headers=resume))
            assert moved
            readers = [r for r in readers if r.headers[WORKER] == "0"]
            # and new streams reach the restarted worker too
            fresh = readers_on_every_worker(url, {"0", "1"})
            set_active(db, bar, False)
            missed = [start + 4, start + 5]
            for reader in readers:
                assert [e["id"] for e in reader.take(3)] == [*missed, start + 6]
            for reader in moved:  # the two it missed, from the table, then live
                assert [e["id"] for e in reader.take(3)] == [*missed, start + 6]
            for reader in fresh:
                assert [e["id"] for e in reader.take(1)] == [start + 6]
            readers += moved + fresh
            assert newest_event_id(db) == start + 6
            assert [e["event_id"] for e in relay.events(3)] == [*missed, start + 6]
            health = httpx.get(f"{url}/healthz", timeout=10)
            assert health.json()["listening"] is True and health.json()["workers"] == "2"
            assert health.json()["worker"] == health.headers[WORKER]
        finally:
            for reader in readers:
                reader.close()
        text = relay.stop()
    wait_for("the workers to exit", lambda: all(_gone(pid) for pid in pids.values()))
    assert "Traceback" not in text


def test_workers_need_http_and_a_free_port(db: Database) -> None:
    from tests.support.cli import assert_one_line_error, run_module

    result = run_module("relay", "--dsn", db.dsn, "--workers", "2", timeout=60)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "need --http")
    bad = run_module(
        "relay",
        "--dsn",
        db.dsn,
        "--http",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--since",
        "999999",
        timeout=60,
    )
    assert bad.returncode == 2, bad.stderr
    assert "--since 999999 is past the newest event" in bad.stderr
    assert "Traceback" not in bad.stderr


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
