"""What the triggers cost a credential writer, on the same data before and after
install and against the same work done by hand: bulk flips (every bar
changing, and few), single toggles (against the bare UPDATE, an app's dual
write of today and a hand-written toggle in one round trip) at the table
sizes platforms run, and many writers at once.

The floors (sql/dev/queries/bench.sql) run in databases without mpesa-sync,
with the same data, the host's triggers on, and an event table and
notifications of their own; every figure is sampled in turns with the
figures it is compared with."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any

import psycopg

from benchmarks.common import RUNS, Bench, Result, timed
from devtools import workload
from devtools.older import V2_CORE, migrate_up_to
from devtools.queries import query
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
FLIP_SANDBOX = FLIP_ALL + " WHERE environment = 'sandbox'"
TOGGLE_ONE = "UPDATE mpesa_credentials SET is_active = NOT is_active WHERE id = %s"
# The floors of a toggle: the app's dual write of today (five statements), and
# the same by hand in one round trip.
DUAL_WRITE = query("bench_dual_write")
DUAL_WRITE_NOTIFY = query("bench_dual_write_notify")
BY_HAND_TOGGLE = query("bench_by_hand_toggle")

MIXED_WRITERS = 12
MIXED_BARS = 24
MIXED_SECONDS = 8.0


def prepare(
    dsn: str,
    rows: int,
    *,
    install: bool,
    release: str | None = None,
    released: bool = True,
    production: bool = False,
) -> None:
    """Host tables with ``rows`` bars (each with an active production
    credential too when ``production``); then every migration, or those up to
    and including ``release`` (as released, or this checkout's files when not
    ``released``)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(resource_dir("sql").joinpath("host_example.sql").read_text())
        conn.execute(LOAD.replace("%(n)s", str(int(rows))))
        if production:
            conn.execute(query("bench_production_rows"))
    if release:
        migrate_up_to(dsn, release, released=released)
    elif install:
        migrations.migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def prepare_by_hand(dsn: str, rows: int) -> None:
    """The data of ``prepare`` without mpesa-sync, and the floors' event table
    and toggle function."""
    prepare(dsn, rows, install=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query("bench_by_hand_install"))


def flip_samples(ways: dict[str, tuple[str, str]]) -> dict[str, list[float]]:
    """RUNS timed flips for each way (dsn, the statements of one flip), the
    ways taking turns within each run; each flip starts from a checkpoint, so
    that none pays for another's writes."""
    conns = {name: psycopg.connect(dsn, autocommit=True) for name, (dsn, _) in ways.items()}
    try:
        samples: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(RUNS):
            for name, (_, statements) in ways.items():
                conn = conns[name]
                conn.execute("VACUUM mpesa_credentials, bars")
                conn.execute("CHECKPOINT")
                samples[name].append(timed(partial(conn.execute, statements)))
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
    cur.execute(DUAL_WRITE, {"bar": bar})
    cur.execute(DUAL_WRITE_NOTIFY, {"bar": bar})
    cur.execute("COMMIT")


def by_hand_toggle(cur: psycopg.Cursor[Any], credential: uuid.UUID, bar: uuid.UUID) -> None:
    cur.execute(BY_HAND_TOGGLE, {"credential": credential})


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


def flip_results(bench: Bench, rows: int, target: float | None) -> list[Result]:
    """A flip of every credential row, each its bar's only one, so that every
    bar changes: after install, before, and by hand (``target`` against the
    last)."""
    with ExitStack() as stack:
        before, after, by_hand = (stack.enter_context(bench.database()) for _ in range(3))
        prepare(before, rows, install=False)
        prepare(after, rows, install=True)
        prepare_by_hand(by_hand, rows)
        samples = flip_samples(
            {
                "ours": (after, FLIP_ALL),
                "bare": (before, FLIP_ALL),
                "by hand": (by_hand, query("bench_by_hand_flip_all")),
            }
        )
    changes = (
        f"every row changes its bar, so each flip writes {rows:,} bars, events and notifications"
    )
    return [
        Result(
            name=f"bulk flip, {rows:,} credential rows in one statement, against the same by hand",
            ours=samples["ours"],
            bare=samples["by hand"],
            target=target,
            note=f"{changes}; by hand: in one transaction, the same UPDATE, then one statement "
            "that rewrites the bars whose status changes (the host's trigger on), inserts an "
            "event row for each and sends its notification (bench_by_hand_flip_all)",
        ),
        Result(
            name=f"bulk flip, {rows:,} credential rows in one statement, against the bare UPDATE",
            ours=samples["ours"],
            bare=samples["bare"],
            note=f"{changes}; bare: the same UPDATE before install, which writes none of them",
        ),
    ]


def few_changes_result(bench: Bench, rows: int) -> Result:
    """A flip that changes no bar's status: every bar also has an active
    production credential, and the flip touches the sandbox rows only."""
    with bench.database() as before, bench.database() as after:
        prepare(before, rows, install=False, production=True)
        prepare(after, rows, install=True, production=True)
        samples = flip_samples({"ours": (after, FLIP_SANDBOX), "bare": (before, FLIP_SANDBOX)})
    return Result(
        name=f"bulk flip, {rows:,} sandbox rows, no bar changing status, against the bare UPDATE",
        ours=samples["ours"],
        bare=samples["bare"],
        target=1.5,
        note="every bar has an active production credential beside its sandbox one, so the "
        "flip changes no status: no bar is written, no event made; bare: the same UPDATE "
        "before install",
    )


def released_core_result(bench: Bench, rows: int) -> Result:
    with bench.database() as v2, bench.database() as current:
        prepare(v2, rows, install=True, release=V2_CORE, released=False)
        prepare(current, rows, install=True)
        samples = flip_samples({"ours": (current, FLIP_ALL), "v2": (v2, FLIP_ALL)})
    return Result(
        name=f"bulk flip, {rows:,} rows, against the released core",
        ours=samples["ours"],
        bare=samples["v2"],
        target=1.0,
        note=f"this release against migrations up to {V2_CORE} (the v2 core DBAs run "
        "today), same data, fresh databases flipped in turns",
    )


@contextmanager
def toggle_databases(bench: Bench, sizes: list[int]) -> Iterator[dict[str, tuple[str, Toggler]]]:
    """At each size, the ways to toggle (keyed ``way@rows``): ours after
    install; the bare UPDATE and the app's dual write before; by hand in one
    round trip."""
    ways: dict[str, tuple[str, Toggler]] = {}
    with ExitStack() as stack:
        for rows in sizes:
            before, after, by_hand = (stack.enter_context(bench.database()) for _ in range(3))
            prepare(before, rows, install=False)
            prepare(after, rows, install=True)
            prepare_by_hand(by_hand, rows)
            ways |= {
                f"ours@{rows}": (after, toggle),
                f"bare@{rows}": (before, toggle),
                f"dual@{rows}": (before, dual_write),
                f"by hand@{rows}": (by_hand, by_hand_toggle),
            }
        yield ways


def toggle_results(bench: Bench, sizes: list[int], toggles: int) -> list[Result]:
    """One toggle at each size against its floors, every way and size taking
    turns; ours at the largest size against ours at the smallest; and the CPU
    cost alone at the largest size."""
    with toggle_databases(bench, sizes) as ways:
        samples = toggle_samples(ways, toggles)
        largest = sizes[-1]
        cpu = toggle_samples(
            {"ours": ways[f"ours@{largest}"], "bare": ways[f"bare@{largest}"]},
            toggles,
            durable=False,
        )
    results = []
    for rows in sizes:
        ours = samples[f"ours@{rows}"]
        results += [
            Result(
                name=f"one toggle at {rows:,} bars, against the same by hand in one round trip",
                ours=ours,
                bare=samples[f"by hand@{rows}"],
                target=1.2,
                note="durable commits; by hand: SELECT by_hand_toggle(id) in autocommit, a "
                "function that updates the credential, then in one statement rewrites its bar "
                "if its status changes (the host's trigger on), inserts the event row and "
                "sends its notification; each toggle changes its bar's status",
            ),
            Result(
                name=f"one toggle at {rows:,} bars, against the app's own dual write",
                ours=ours,
                bare=samples[f"dual@{rows}"],
                target=1.0,
                note="durable commits; the app's dual write is BEGIN, the UPDATE, "
                "UPDATE bars SET mpesa_enabled = EXISTS(...), NOTIFY, COMMIT",
            ),
            Result(
                name=f"one toggle at {rows:,} bars, against the bare UPDATE",
                ours=ours,
                bare=samples[f"bare@{rows}"],
                target=1.3,
                note="durable commits; the same single-row UPDATE before install",
            ),
        ]
    smallest = sizes[0]
    results += [
        Result(
            name=f"one toggle, ours at {largest:,} bars against ours at {smallest:,}",
            ours=samples[f"ours@{largest}"],
            bare=samples[f"ours@{smallest}"],
            target=1.2,
            note="flat in table size: ours at the largest size against ours at the smallest, "
            "sampled in turns with every size (the rows above give ours at each size)",
        ),
        Result(
            name=f"one toggle at {largest:,} bars, synchronous_commit=off",
            ours=cpu["ours"],
            bare=cpu["bare"],
            note="no wait for the WAL flush: the triggers' CPU cost alone",
        ),
    ]
    return results


def run(bench: Bench) -> list[Result]:
    results: list[Result] = []
    flip_rows = bench.size(100_000, 10_000)
    growth = [bench.size(n, n // 10) for n in (10_000, 100_000, 1_000_000)]
    toggle_sizes = [bench.size(n, n // 10) for n in (1_000, 10_000, 100_000)]
    toggles = bench.size(2_000, 500)

    for rows in sorted({flip_rows, *growth}):
        results += flip_results(bench, rows, target=1.2 if rows == flip_rows else None)
    results.append(few_changes_result(bench, flip_rows))
    results.append(released_core_result(bench, flip_rows))
    results += toggle_results(bench, toggle_sizes, toggles)
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
