"""Writers that toggle credentials in the background while a test does
something else to the database: an upgrade, a crash."""

from __future__ import annotations

import random
import threading
import time
import uuid

import psycopg

from tests.support.database import Database
from tests.support.waiting import wait_for

TOGGLE = "UPDATE mpesa_credentials SET is_active = NOT is_active WHERE tenant_id = %s"


class Writers:
    """``count`` threads whose transactions toggle the credentials of one to
    ``most`` random bars (in id order, so that they never deadlock each
    other), until the block ends or ``stopped`` is set.

    Any error ends the writer and is recorded in ``errors``, except, with
    ``reconnect``, a lost connection: the writer connects again and goes on
    (``lost`` counts them). ``durable`` commits wait for the WAL flush even on
    the suite's clusters, which run with synchronous_commit off.
    """

    def __init__(
        self,
        db: Database,
        bars: list[uuid.UUID],
        *,
        count: int = 4,
        most: int = 1,
        reconnect: bool = False,
        durable: bool = False,
    ) -> None:
        self.db, self.bars, self.most = db, bars, most
        self.reconnect, self.durable = reconnect, durable
        self.stopped = threading.Event()
        self.committed = 0
        self.lost = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(count)]

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every writer and wait until none is in a transaction."""
        self.stopped.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stopped.is_set():
            try:
                with self.db.connect(connect_timeout=5) as conn:
                    if self.durable:
                        conn.execute("SET synchronous_commit = on")
                    while not self.stopped.is_set():
                        with conn.transaction():
                            for bar in sorted(rng.sample(self.bars, rng.randint(1, self.most))):
                                conn.execute(TOGGLE, (bar,))
                        with self._lock:
                            self.committed += 1
            except psycopg.OperationalError as exc:
                if not self.reconnect:
                    self._fail(exc)
                    return
                with self._lock:
                    self.lost += 1
                time.sleep(0.05)  # back off while the server restarts; not synchronisation
            except Exception as exc:  # any other error fails the test that reads errors
                self._fail(exc)
                return

    def _fail(self, exc: Exception) -> None:
        with self._lock:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def wait_for_more(self, count: int, timeout: float = 60) -> None:
        """Until ``count`` more transactions have committed (or a writer failed)."""
        target = self.committed + count
        wait_for(
            f"{count} more committed transactions",
            lambda: self.committed >= target or self.errors,
            timeout,
        )
