"""Many writers at once, the way the platform's apps write: the workload of the
concurrency tests and of the mixed-writer benchmark.

Each writer runs transactions of one to three statements on random bars:
credential toggles, inserts, deletes, moves to and from a bar of its own,
direct writes of ``bars.mpesa_enabled`` (one bar, or several locked in id
order first). Every transaction touches its bars in ascending id order, one
statement per bar, and moves only between a shared bar and the writer's own
archive bar. That is the discipline under which the host's transactions
cannot deadlock each other, with or without mpesa-sync: with it, a workload
that deadlocks shows a lock of ours out of order.

The same workload runs against a database without mpesa-sync for the bare
figure, so throughput is always compared in one run on one server.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors

from devtools.queries import query

# The host's constraints refuse some random operations (a move into a slot
# that is taken): they say nothing about mpesa-sync.
REFUSED_BY_HOST = (errors.UniqueViolation, errors.ForeignKeyViolation)
ENVIRONMENTS = ("sandbox", "production")


@dataclass
class Bars:
    """The bars of one run: shared ``main`` bars and one archive bar per writer."""

    main: list[uuid.UUID]
    archive: list[uuid.UUID]


@dataclass
class WorkloadResult:
    """What the writers did: committed transactions and statements by kind."""

    seconds: float
    transactions: int = 0
    statements: Counter[str] = field(default_factory=Counter)
    refused_by_host: int = 0
    deadlocks: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def operations(self) -> int:
        return sum(self.statements.values())

    @property
    def operations_per_second(self) -> float:
        return self.operations / self.seconds


def create_bars(conn: psycopg.Connection[Any], *, main: int, writers: int) -> Bars:
    """Load the run's bars and credentials (the triggers, if installed, sync them)."""
    rows = conn.execute(query("workload_bars"), {"main": main, "archive": writers}).fetchall()
    return Bars(
        main=sorted(bar for kind, bar in rows if kind == "main"),
        archive=[bar for kind, bar in rows if kind == "archive"],
    )


Step = tuple[str, str, dict[str, Any]]  # (kind, query name, parameters)


def transaction_steps(rng: random.Random, bars: Bars, writer: int) -> list[Step]:
    """One transaction's statements, in the order that keeps it deadlock-free."""
    own = bars.archive[writer]
    shape = rng.random()
    if shape < 0.15:  # hand a row back from the writer's own bar
        return [("move_back", "workload_move", _row(rng, own, target=rng.choice(bars.main)))]
    if shape < 0.30:  # several bars at once, locked in id order first
        chosen = sorted(rng.sample(bars.main, rng.randint(2, 4)))
        params = {"bars": chosen, "enabled": rng.choice([True, False])}
        return [
            ("lock_bars", "workload_lock_bars", params),
            ("bars_write", "workload_bars_write", params),
        ]
    steps: list[Step] = []
    chosen = sorted(rng.sample(bars.main, rng.randint(1, 3)))
    for bar in chosen:
        kinds = ["toggle", "toggle", "insert", "delete", "bar_write"]
        if bar == chosen[-1]:  # last, so that the writer's own bar is its highest lock
            kinds.append("move_out")
        kind = rng.choice(kinds)
        if kind == "bar_write":
            steps.append((kind, "workload_bar_write", {"bar": bar, "enabled": rng.random() < 0.5}))
        elif kind == "move_out":
            steps.append((kind, "workload_move", _row(rng, bar, target=own)))
        else:
            params = _row(rng, bar, active=rng.choice([True, False, None]))
            steps.append((kind, f"workload_{kind}", params))
    return steps


def _row(rng: random.Random, bar: uuid.UUID, **extra: Any) -> dict[str, Any]:
    return {"bar": bar, "environment": rng.choice(ENVIRONMENTS), **extra}


def run(
    dsn: str,
    bars: Bars,
    *,
    writers: int,
    seconds: float | None = None,
    transactions_per_writer: int | None = None,
    seed: int = 0,
    on_transaction: Callable[[], None] | None = None,
) -> WorkloadResult:
    """Run ``writers`` writers for ``seconds`` (or a fixed number of transactions each).

    Each transaction is retried never: a deadlock or any other database error
    is recorded, the refusals of the host's own constraints are counted.
    """
    if (seconds is None) == (transactions_per_writer is None):
        raise ValueError("give seconds or transactions_per_writer")
    result = WorkloadResult(seconds=0.0)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds if seconds is not None else None

    def writer(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        done = 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                if transactions_per_writer is not None and done >= transactions_per_writer:
                    return
                done += 1
                steps = transaction_steps(rng, bars, index)
                outcome = _transaction(conn, steps)
                with lock:
                    if outcome is None:
                        result.transactions += 1
                        result.statements.update(kind for kind, _, _ in steps)
                    elif isinstance(outcome, REFUSED_BY_HOST):
                        result.refused_by_host += 1
                    elif isinstance(outcome, errors.DeadlockDetected):
                        result.deadlocks.append(f"{[k for k, _, _ in steps]}: {outcome}")
                    else:
                        result.failures.append(f"{type(outcome).__name__}: {outcome}")
                if on_transaction is not None:
                    on_transaction()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - started
    return result


def _transaction(conn: psycopg.Connection[Any], steps: list[Step]) -> psycopg.Error | None:
    try:
        with conn.transaction():
            for _, name, params in steps:
                conn.execute(query(name), params)
    except psycopg.Error as exc:
        return exc
    return None
