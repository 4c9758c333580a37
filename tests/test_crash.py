"""A crash in a write storm: writers toggle credentials and a relay follows the
events when the server is stopped in immediate mode (as a power cut would stop
it) and started again. The relay's output must be exactly the events the
table holds after its start, in order; no bar may drift.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from tests.support.cli import run_cli
from tests.support.database import Database
from tests.support.relay import RelayProcess, newest_event_id
from tests.support.waiting import wait_for

TOGGLE = "UPDATE mpesa_credentials SET is_active = NOT is_active WHERE tenant_id = %s"


class Storm:
    """Writers whose transactions toggle one to three bars (in id order); a
    writer that loses its connection connects again and goes on."""

    def __init__(self, db: Database, bars: list[uuid.UUID], writers: int = 6) -> None:
        self.db, self.bars = db, bars
        self.stopped = threading.Event()
        self.committed = 0
        self.lost = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(writers)]

    def __enter__(self) -> Storm:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stopped.is_set():
            try:
                with self.db.connect(connect_timeout=5) as conn:
                    # The suite's clusters run with synchronous_commit off, and
                    # an immediate shutdown loses what the WAL writer had not
                    # written yet: these writers commit durably, as apps do.
                    conn.execute("SET synchronous_commit = on")
                    while not self.stopped.is_set():
                        with conn.transaction():
                            for bar in sorted(rng.sample(self.bars, rng.randint(1, 3))):
                                conn.execute(TOGGLE, (bar,))
                        with self._lock:
                            self.committed += 1
            except psycopg.OperationalError:
                with self._lock:
                    self.lost += 1
                time.sleep(0.05)  # back off while the server restarts; not synchronisation
            except Exception as exc:
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                return

    def wait_for_more(self, count: int, timeout: float = 60) -> None:
        target = self.committed + count
        wait_for(
            f"{count} more committed transactions",
            lambda: self.committed >= target or self.errors,
            timeout,
        )


def test_relay_output_equals_the_table_across_an_immediate_shutdown(
    db: Database, server: Any
) -> None:
    if server.cluster is None:
        pytest.skip(f"server {server.label} is not ours to stop")
    bars = [db.add_bar(f"bar {i}") for i in range(16)]
    for i, bar in enumerate(bars):
        db.add_credentials(bar, active=i % 2 == 0)
    start = newest_event_id(db)

    with RelayProcess(db.dsn, "--since", str(start)) as relay:
        relay.wait_listening()
        with Storm(db, bars) as storm:
            storm.wait_for_more(100)
            server.restart("immediate")
            storm.wait_for_more(100)
        assert storm.errors == []
        assert storm.lost > 0  # the writers did see the crash
        newest = newest_event_id(db)
        relayed: list[int] = []
        while not relayed or relayed[-1] < newest:
            relayed += [event["event_id"] for event in relay.events(1, timeout=60)]
        relay.stop()

    in_table = [
        row["event_id"]
        for row in db.query(
            "SELECT event_id FROM mpesa_sync.status_events WHERE event_id > %s ORDER BY event_id",
            (start,),
        )
    ]
    assert relayed == in_table
    assert len(in_table) > 200
    assert db.drift() == []
    assert db.scalar("SELECT count(*) FROM mpesa_sync.pending_changes") == 0
    assert run_cli("verify", "--dsn", db.dsn).code == 0
