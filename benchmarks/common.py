"""What every benchmark shares: the result type, timing, and the database.

A benchmark module defines ``run(bench: Bench) -> list[Result]``. Each Result
holds samples of our work and, where there is one, of the floor it is
compared with (the bare work, or the same work done by hand), both measured
on the same server in the same run. Targets are ratios of medians; absolute
times on a shared machine drift, ratios much less.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

RUNS = 5  # samples per figure; medians are quoted, with min-max


@dataclass
class Result:
    name: str
    ours: list[float]  # samples, in `unit`
    bare: list[float] | None = None  # samples of the floor, same unit
    # max allowed median(ours) / median(bare); the least allowed when higher_is_better
    target: float | None = None
    unit: str = "s"
    note: str = ""
    # For figures that are not a ratio (latency percentiles, events/s): the
    # target is an upper bound (or lower bound when higher_is_better) on the median.
    higher_is_better: bool = False
    absolute_target: float | None = None

    @property
    def ratio(self) -> float | None:
        if not self.bare:
            return None
        return statistics.median(self.ours) / statistics.median(self.bare)

    @property
    def met(self) -> bool | None:
        if self.target is not None and self.ratio is not None:
            if self.higher_is_better:
                return self.ratio >= self.target
            return self.ratio <= self.target
        if self.absolute_target is not None:
            value = statistics.median(self.ours)
            return (
                value >= self.absolute_target
                if self.higher_is_better
                else (value <= self.absolute_target)
            )
        return None


@dataclass
class Bench:
    """The server under test and the scale of this run."""

    admin_dsn_template: str  # format with dbname=
    scale: str  # "small" or "full"
    server_version: str = ""
    created: list[str] = field(default_factory=list)

    def size(self, full: int, small: int) -> int:
        return full if self.scale == "full" else small

    def dsn(self, dbname: str) -> str:
        return self.admin_dsn_template.format(dbname=dbname)

    @contextmanager
    def database(self, template: str | None = None) -> Iterator[str]:
        """A new database (optionally a copy of ``template``); yields its DSN."""
        name = f"bench_{uuid.uuid4().hex[:10]}"
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(query)
        try:
            yield self.dsn(name)
        finally:
            with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def scale_from_env() -> str:
    scale = os.environ.get("BENCH_SCALE", "full")
    if scale not in ("small", "full"):
        raise SystemExit(f"BENCH_SCALE must be small or full, not {scale!r}")
    return scale
