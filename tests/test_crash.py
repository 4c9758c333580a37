"""A crash in a write storm: writers toggle credentials and a relay follows the
events when the server is stopped in immediate mode (as a power cut would stop
it) and started again. The relay's output must be exactly the events the
table holds after its start, in order; no bar may drift.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.cli import run_cli
from tests.support.database import Database
from tests.support.relay import RelayProcess, event_ids_after, newest_event_id
from tests.support.writers import Writers


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
        with Writers(db, bars, count=6, most=3, reconnect=True, durable=True) as storm:
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

    in_table = event_ids_after(db, start)
    assert relayed == in_table
    assert len(in_table) > 200
    assert db.drift() == []
    assert db.scalar("SELECT count(*) FROM mpesa_sync.pending_changes") == 0
    assert run_cli("verify", "--dsn", db.dsn).code == 0
