"""Consumers that follow the status events across an upgrade: a listener with
the documented protocol, and what this release's relay printed."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from tests.support.database import Database
from tests.support.relay import RelayProcess
from tests.support.waiting import wait_for


class Listener:
    """The documented protocol of a service that follows status changes:
    LISTEN on a dedicated autocommit connection, then read status_events
    after the last id handed on, again after every notification."""

    def __init__(self, db: Database, after: int) -> None:
        self.db, self.last = db, after
        self.ids: list[int] = []
        self.stopped = threading.Event()
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> Listener:
        self._thread.start()
        assert self.listening.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self._thread.join(timeout=30)

    def _catch_up(self, conn: psycopg.Connection[Any]) -> None:
        for (event_id,) in conn.execute(
            "SELECT event_id FROM mpesa_sync.status_events WHERE event_id > %s ORDER BY event_id",
            (self.last,),
        ):
            self.ids.append(event_id)
            self.last = event_id

    def _run(self) -> None:
        with self.db.connect() as conn:
            conn.execute("LISTEN mpesa_status")
            self.listening.set()
            self._catch_up(conn)
            while not self.stopped.is_set():
                for _ in conn.notifies(timeout=0.2):
                    break  # a hint: leave the generator, then read the table
                self._catch_up(conn)

    def wait_for(self, event_id: int) -> None:
        wait_for(f"the listener to reach event {event_id}", lambda: self.last >= event_id)


def relayed_ids(relay: RelayProcess, upto: int) -> list[int]:
    """The event ids the relay printed, until it has printed ``upto`` (a
    reset line fails: the relay lost its position)."""
    ids: list[int] = []
    while not ids or ids[-1] < upto:
        [line] = relay.events(1)
        assert "reset" not in line, line
        ids.append(line["event_id"])
    return ids
