"""What the triggers cost a credential writer, on the same data before and after
install: bulk flips, single toggles (against the bare UPDATE and against an
app doing the dual write by hand) at the table sizes platforms run, and many
writers at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import psycopg

from benchmarks.common import RUNS, Bench, Result, timed
from devtools import workload
from devtools.older import FIRST_RELEASE, migrate_up_to
from mpesa_sync import migrations, realtime
from mpesa_sync.resources import resource_dir

# One sandbox credential row per bar, half of them active.
LOAD = """
    INSERT INTO bars (id, name, mpesa_enabled)
    SELECT md5(i::text)::uuid, 'bar ' || i, i % 2 = 0
    FROM generate_series(1, %(n)s) AS i;
    INSERT INTO mpesa_credentials (tenant_id, environment, business_shortcode,
                                   consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)
    SELECT md5(i::text)::uuid, 'sandbox', '174379', 'k', 's', 'p', i % 2 = 0
    FROM generate_series(1, %(n)s) AS i;
"""
FLIP_ALL = "UPDATE mpesa_credentials SET is_active = NOT is_active"
TOGGLE_ONE = "UPDATE mpesa_credentials SET is_active = NOT is_active WHERE id = %s"
# What an app without mpesa-sync does to keep the flag right by hand.
DUAL_WRITE = (
    "UPDATE bars SET mpesa_enabled = EXISTS ("
    " SELECT 1 FROM mpesa_credentials AS c WHERE c.tenant_id = bars.id AND c.is_active)"
    " WHERE id = %s"
)
NOTIFY = "SELECT pg_notify('mpesa_status', %s)"

MIXED_WRITERS = 12
MIXED_BARS = 24
MIXED_SECONDS = 8.0


def prepare(dsn: str, rows: int, *, install: bool, release: str | None = None) -> None:
    """Host tables with ``rows`` bars; then every migration, or those of an
    older ``release`` (up to and including that migration)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(resource_dir("sql").joinpath("host_example.sql").read_text())
        conn.execute(LOAD.replace("%(n)s", str(int(rows))))
    if release:
        migrate_up_to(dsn, release)
    elif install:
        migrations.migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def flip_samples(*dsns: str) -> dict[str, list[float]]:
    """RUNS timed flips of every credential row in each database, in turns."""
    samples: dict[str, list[float]] = {dsn: [] for dsn in dsns}
    conns = {dsn: psycopg.connect(dsn, autocommit=True) for dsn in dsns}
    try:
        for _ in range(RUNS):
            for dsn, conn in conns.items():
                conn.execute("VACUUM mpesa_credentials, bars")
                samples[dsn].append(timed(partial(conn.execute, FLIP_ALL)))
        return samples
    finally:
        for conn in conns.values():
            conn.close()


Toggler = Callable[[psycopg.Cursor[Any], uuid.UUID, uuid.UUID], None]


def toggle(cur: psycopg.Cursor[Any], credential: uuid.UUID, bar: uuid.UUID) -> None:
    cur.execute(TOGGLE_ONE, (credential,))


def dual_write(cur: psycopg.Cursor[Any], credential: uuid.UUID, bar: uuid.UUID) -> None:
    cur.execute("BEGIN")
    cur.execute(TOGGLE_ONE, (credential,))
    cur.execute(DUAL_WRITE, (bar,))
    cur.execute(NOTIFY, (str(bar),))
    cur.execute("COMMIT")


def toggle_samples(
    ways: dict[str, tuple[str, Toggler]], toggles: int, *, durable: bool = True
) -> dict[str, list[float]]:
    """Seconds per toggle, RUNS samples for each way (dsn, toggler), the ways
    taking turns within each run so that drift on the machine hits them alike."""
    conns = {name: psycopg.connect(dsn, autocommit=True) for name, (dsn, _) in ways.items()}
    try:
        pairs = {}
        for name, conn in conns.items():
            if not durable:
                conn.execute("SET synchronous_commit = off")
            pairs[name] = conn.execute(
                "SELECT id, tenant_id FROM mpesa_credentials ORDER BY id LIMIT %s", (toggles,)
            ).fetchall()
        samples: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(RUNS):
            for name, (_, toggler) in ways.items():
                conn = conns[name]
                conn.execute("VACUUM mpesa_credentials, bars")
                cur = conn.cursor()
                start = time.perf_counter()
                for credential, bar in pairs[name]:
                    toggler(cur, credential, bar)
                samples[name].append((time.perf_counter() - start) / len(pairs[name]))
        return samples
    finally:
        for conn in conns.values():
            conn.close()


# Realtime's send replaced by one that does nothing: what the sink itself costs.
NO_OP_SEND = """
    CREATE OR REPLACE FUNCTION realtime.send(payload jsonb, event text, topic text,
                                             private boolean DEFAULT true)
    RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$
"""


def realtime_results(bench: Bench, rows: int, toggles: int) -> list[Result]:
    """One toggle with the broadcast sink on against the same toggle with it
    off: installed databases with the same data and a stand-in of Supabase
    Realtime's schema, the sink enabled in two (one of them with a send that
    does nothing), toggled in turns."""
    standin = resource_dir("sql").joinpath("dev", "realtime_standin.sql").read_text()
    results = []
    with bench.database() as off, bench.database() as on, bench.database() as no_op:
        for dsn in (off, on, no_op):
            prepare(dsn, rows, install=True)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(standin)
        realtime.enable(on)
        realtime.enable(no_op)
        with psycopg.connect(no_op, autocommit=True) as conn:
            conn.execute(NO_OP_SEND)
        note = (
            "`mpesa-sync realtime enable` against a stand-in of Realtime's schema "
            "(realtime.send as Supabase defines it, sent as a superuser, so no RLS check "
            "on the insert); each toggle sends one broadcast"
        )
        durable = toggle_samples({"on": (on, toggle), "off": (off, toggle)}, toggles)
        cpu = toggle_samples(
            {"on": (on, toggle), "no_op": (no_op, toggle), "off": (off, toggle)},
            toggles,
            durable=False,
        )
        results += [
            Result(
                name=f"one toggle at {rows:,} bars, realtime sink on vs off",
                ours=durable["on"],
                bare=durable["off"],
                target=1.5,
                note=note + "; durable commits",
            ),
            Result(
                name=f"one toggle at {rows:,} bars, realtime sink on vs off, "
                "synchronous_commit=off",
                ours=cpu["on"],
                bare=cpu["off"],
                note=note + "; no wait for the WAL flush: the CPU cost alone",
            ),
            Result(
                name=f"one toggle at {rows:,} bars, realtime sink with a no-op send vs off, "
                "synchronous_commit=off",
                ours=cpu["no_op"],
                bare=cpu["off"],
                note="the sink's own CPU cost: realtime.send replaced by one that does nothing",
            ),
        ]
    return results


def mixed_samples(bench: Bench, seconds: float) -> tuple[list[float], list[float]]:
    """Statements per second of the platform workload, with and without mpesa-sync."""
    ours: list[float] = []
    bare: list[float] = []
    for _ in range(RUNS):
        for install, sink in ((True, ours), (False, bare)):
            with bench.database() as dsn:
                prepare(dsn, 0, install=install)
                with psycopg.connect(dsn, autocommit=True) as conn:
                    bars = workload.create_bars(conn, main=MIXED_BARS, writers=MIXED_WRITERS)
                result = workload.run(dsn, bars, writers=MIXED_WRITERS, seconds=seconds)
                if result.deadlocks or result.failures:
                    raise RuntimeError(f"the mixed workload failed: {result}")
                sink.append(result.operations_per_second)
    return ours, bare


def run(bench: Bench) -> list[Result]:
    results: list[Result] = []
    flip_rows = bench.size(100_000, 10_000)
    growth = [bench.size(n, n // 10) for n in (10_000, 100_000, 1_000_000)]
    toggle_sizes = [bench.size(n, n // 10) for n in (1_000, 10_000, 100_000)]
    toggles = bench.size(2_000, 500)

    for rows in sorted({flip_rows, *growth}):
        with bench.database() as before, bench.database() as after:
            prepare(before, rows, install=False)
            prepare(after, rows, install=True)
            bare, ours = flip_samples(before)[before], flip_samples(after)[after]
            results.append(
                Result(
                    name=f"bulk flip, {rows:,} credential rows in one statement",
                    ours=ours,
                    bare=bare,
                    target=2.0 if rows == flip_rows else None,
                    note="after vs before install; every row changes its bar, so each flip "
                    f"writes {rows:,} bars, events and notifications",
                )
            )
            if rows == flip_rows:
                # fresh databases with the same history, flipped in turns, so
                # that neither side pays for the other's WAL or checkpoints
                with bench.database() as v1, bench.database() as current:
                    prepare(v1, rows, install=True, release=FIRST_RELEASE)
                    prepare(current, rows, install=True)
                    samples = flip_samples(current, v1)
                    results.append(
                        Result(
                            name=f"bulk flip, {rows:,} rows, against the released core",
                            ours=samples[current],
                            bare=samples[v1],
                            target=1.0,
                            note=f"this release against migrations up to {FIRST_RELEASE} "
                            "(the v1 core DBAs run today), same data, fresh databases "
                            "flipped in turns",
                        )
                    )

    for rows in toggle_sizes:
        with bench.database() as before, bench.database() as after:
            prepare(before, rows, install=False)
            prepare(after, rows, install=True)
            samples = toggle_samples(
                {"ours": (after, toggle), "bare": (before, toggle), "dual": (before, dual_write)},
                min(toggles, rows),
            )
            results += [
                Result(
                    name=f"one toggle at {rows:,} bars, against the app's own dual write",
                    ours=samples["ours"],
                    bare=samples["dual"],
                    target=1.0,
                    note="durable commits; the app's dual write is BEGIN, the UPDATE, "
                    "UPDATE bars SET mpesa_enabled = EXISTS(...), NOTIFY, COMMIT; "
                    "each toggle changes its bar's status",
                ),
                Result(
                    name=f"one toggle at {rows:,} bars, against the bare UPDATE",
                    ours=samples["ours"],
                    bare=samples["bare"],
                    target=1.5,
                    note="durable commits; the same single-row UPDATE before install",
                ),
            ]
            if rows == toggle_sizes[-1]:
                cpu = toggle_samples(
                    {"ours": (after, toggle), "bare": (before, toggle)},
                    min(toggles, rows),
                    durable=False,
                )
                results.append(
                    Result(
                        name=f"one toggle at {rows:,} bars, synchronous_commit=off",
                        ours=cpu["ours"],
                        bare=cpu["bare"],
                        note="no wait for the WAL flush: the triggers' CPU cost alone",
                    )
                )

    results += realtime_results(bench, toggle_sizes[1], min(toggles, toggle_sizes[1]))

    seconds = MIXED_SECONDS if bench.scale == "full" else 2.0
    ours, bare = mixed_samples(bench, seconds)
    results.append(
        Result(
            name=f"mixed writers, {MIXED_WRITERS} at once on {MIXED_BARS} bars",
            ours=ours,
            bare=bare,
            target=0.5,
            higher_is_better=True,
            unit="statements/s",
            note=f"{seconds:g} s per run of devtools/workload.py: transactions of one "
            "to three statements over several bars (toggles, inserts, deletes, moves, direct "
            "writes of bars), after vs before install; no deadlock in either",
        )
    )
    return results
