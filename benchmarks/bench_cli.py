"""How long `mpesa-sync --help` takes, against starting Python and doing nothing.

Wall time of the installed console script, each run a fresh process, as a
shell or cron starts it. The commands import their modules only when they
run (mpesa_sync/cli.py), so `--help` loads click and nothing of the library;
the target is 0.25 s on the 2-core machine BENCHMARKS.md names. Before the
commands were lazy it took 0.42-0.66 s there (medians of 21-31 runs in three
sessions, the machine shared with other work). Needs no database.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.common import Bench, Result, timed

SAMPLES = 21  # each a process start; cheap, and the median of many is steadier
WARMUP = 3  # the first runs pay for a cold page cache

MPESA_SYNC = Path(sys.executable).with_name("mpesa-sync")
HELP = (str(MPESA_SYNC), "--help")
BARE = (sys.executable, "-c", "pass")


def run(bench: Bench) -> list[Result]:
    return [
        Result(
            "mpesa-sync --help (wall time)",
            samples(HELP),
            bare=samples(BARE),
            absolute_target=0.25,
            note="bare work: starting the same Python with `-c pass`. The target is "
            "absolute (0.25 s); the ratio shows what the CLI adds to interpreter start.",
        )
    ]


def samples(command: tuple[str, ...], count: int = SAMPLES) -> list[float]:
    for _ in range(WARMUP):
        _run(command)
    return [timed(lambda: _run(command)) for _ in range(count)]


def _run(command: tuple[str, ...]) -> None:
    subprocess.run(command, check=True, capture_output=True)


if __name__ == "__main__":  # `python -m benchmarks.bench_cli`: this row alone, no database
    from benchmarks.run import row

    for result in run(Bench("", "small")):
        print(row(result))
