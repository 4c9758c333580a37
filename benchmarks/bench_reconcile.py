"""reconcile and verify against the same work done by hand, on a million bars
with 10% drift.

- reconcile (detection, batches through fix_bars_v2 with the correction and
  host's triggers, events and notifications, re-check) against the same fix
  by hand: in one transaction, one ``UPDATE ... FROM`` of the drifted bars
  with the host's triggers on, an event row in a hand-written table and a
  notification for each fixed bar, in a database without mpesa-sync; and,
  for information, against a bare ``UPDATE ... FROM`` that fixes the same
  rows with no trigger firing and no event;
- verify (read-only snapshot, counts, 100 drifted bars listed, open alerts)
  against one bare counting query;
- reconcile at growing sizes, to show the cost per bar stays flat.

The drifted databases (one with mpesa-sync, one without) are built once per
size, behind the triggers' back, and copied for every sample, so each sample
starts from the same drift. The floors (sql/dev/queries/bench.sql) run with
the work_mem our commands give themselves: with the server's default they
fall back to an index probe per bar and look slower than they need to.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import psycopg
from psycopg import conninfo

from benchmarks.common import RUNS, Bench, Result, timed
from devtools import queries as dev_queries
from mpesa_sync import migrations
from mpesa_sync.queries import query
from mpesa_sync.reconciliation import reconcile
from mpesa_sync.resources import resource_dir
from mpesa_sync.verification import verify

DRIFT = 0.10

# Bar i has an active sandbox credential when i % 10 < 5, an inactive one when
# i % 10 is 5 or 6, none otherwise; bars with i % 10 = 0 also have an inactive
# production row. 10% drift, both ways: i % 20 = 3 should be on and is off,
# i % 20 = 8 should be off and is on. Loaded in replica mode, so no trigger
# fires and the drift stays.
LOAD_SQL = (
    """
    INSERT INTO public.bars (id, name, mpesa_enabled)
    SELECT md5('bar' || i)::uuid,
           'bar ' || i,
           CASE i %% 20 WHEN 3 THEN false WHEN 8 THEN true ELSE i %% 10 < 5 END
    FROM generate_series(1, %(bars)s) AS i
    """,
    """
    INSERT INTO public.mpesa_credentials (tenant_id, environment, business_shortcode,
        consumer_key_enc, consumer_secret_enc, passkey_enc, is_active)
    SELECT md5('bar' || i)::uuid, 'sandbox', '174379', 'k'::bytea, 's'::bytea, 'p'::bytea,
           i %% 10 < 5
    FROM generate_series(1, %(bars)s) AS i
    WHERE i %% 10 < 7
    UNION ALL
    SELECT md5('bar' || i)::uuid, 'production', '600126', 'k'::bytea, 's'::bytea, 'p'::bytea, false
    FROM generate_series(1, %(bars)s) AS i
    WHERE i %% 10 = 0
    """,
)


def run(bench: Bench) -> list[Result]:
    main_size = bench.size(1_000_000, 20_000)
    growth = [bench.size(10_000, 1_000), bench.size(100_000, 5_000)]
    results = []
    for bars in growth:
        with (
            _drifted_template(bench, bars, install=True) as ours,
            _drifted_template(bench, bars, install=False) as by_hand,
        ):
            results += _reconcile_results(bench, ours, by_hand, bars, target=None)
    with (
        _drifted_template(bench, main_size, install=True) as ours,
        _drifted_template(bench, main_size, install=False) as by_hand,
    ):
        results += _reconcile_results(bench, ours, by_hand, main_size, target=1.2)
        results.append(_verify_result(bench, ours, main_size))
    return results


@contextmanager
def _drifted_template(bench: Bench, bars: int, *, install: bool) -> Iterator[str]:
    """A database holding ``bars`` bars with 10% drift, migrated or (without
    ``install``) with the floors' event table instead; yields its name."""
    with bench.database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(resource_dir("sql").joinpath("host_example.sql").read_text())
            if not install:
                conn.execute(dev_queries.query("bench_by_hand_install"))
        if install:
            migrations.migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            with conn.transaction():
                conn.execute("SET LOCAL session_replication_role = replica")
                for statement in LOAD_SQL:
                    conn.execute(statement, {"bars": bars})
            conn.execute("VACUUM (ANALYZE) public.bars, public.mpesa_credentials")
        yield conninfo.conninfo_to_dict(dsn)["dbname"]  # type: ignore[misc]


@contextmanager
def _copy(bench: Bench, template: str) -> Iterator[str]:
    """A fresh copy of ``template``, checkpointed so no sample pays for another's writes."""
    with bench.database(template=template) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        yield dsn


def _reconcile_results(
    bench: Bench, ours: str, by_hand: str, bars: int, target: float | None
) -> list[Result]:
    """reconcile on copies of ``ours`` against the fixes by hand on copies of
    ``by_hand`` (``target``) and the bare fix on copies of ``ours``, in turns."""
    drifted = round(bars * DRIFT)
    samples: dict[str, list[float]] = {"ours": [], "by hand": [], "bare": []}
    for _ in range(RUNS):
        with _copy(bench, ours) as dsn:
            samples["ours"].append(timed(partial(_our_fix, dsn, drifted)))
        with _copy(bench, by_hand) as dsn:
            samples["by hand"].append(timed(partial(_by_hand_fix, dsn, drifted)))
        with _copy(bench, ours) as dsn:
            samples["bare"].append(timed(partial(_bare_fix, dsn, drifted)))
    per_bar = statistics.median(samples["ours"]) / drifted * 1e6
    name = f"reconcile, {bars:,} bars, {drifted:,} drifted"
    return [
        Result(
            name=f"{name}, against the same fix by hand",
            ours=samples["ours"],
            bare=samples["by hand"],
            target=target,
            note="by hand: in one transaction, one UPDATE ... FROM of the drifted bars with "
            "the host's triggers on, an event row and a notification per fixed bar "
            f"(bench_by_hand_reconcile), same work_mem; {per_bar:.0f} us/drifted bar",
        ),
        Result(
            name=f"{name}, against a bare UPDATE with no trigger",
            ours=samples["ours"],
            bare=samples["bare"],
            note="informational: one UPDATE ... FROM with session_replication_role = replica "
            "(no trigger fires, no event is written), same work_mem",
        ),
    ]


def _our_fix(dsn: str, drifted: int) -> None:
    report = reconcile(dsn)
    assert report.fixed == drifted and report.ok, report


def _by_hand_fix(dsn: str, drifted: int) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(query("set_work_mem"))  # the memory reconcile gives itself
        row = conn.execute(dev_queries.query("bench_by_hand_reconcile")).fetchone()
    assert row is not None and row[0] == drifted, row


def _bare_fix(dsn: str, drifted: int) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("SET session_replication_role = replica")  # no trigger fires
        conn.execute(query("set_work_mem"))  # the memory reconcile gives itself
        changed = conn.execute(dev_queries.query("bench_bare_fix")).rowcount
    assert changed == drifted, changed


def _verify_result(bench: Bench, template: str, bars: int) -> Result:
    drifted = round(bars * DRIFT)
    ours: list[float] = []
    bare: list[float] = []
    with _copy(bench, template) as dsn:
        verify(dsn)  # warm the cache for both
        for _ in range(RUNS):
            ours.append(timed(partial(_our_count, dsn, drifted)))
            bare.append(timed(partial(_bare_count, dsn, drifted)))
    return Result(
        name=f"verify, {bars:,} bars, {drifted:,} drifted",
        ours=ours,
        bare=bare,
        target=1.2,
        note="bare: one counting query, same work_mem; ours also lists 100 drifted bars",
    )


def _our_count(dsn: str, drifted: int) -> None:
    report = verify(dsn)
    assert report.drifted_total == drifted and len(report.drifted) == 100, report.drifted_total


def _bare_count(dsn: str, drifted: int) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(query("set_work_mem"))  # the memory verify gives itself
        row = conn.execute(dev_queries.query("bench_bare_count")).fetchone()
    assert row is not None and row[0] == drifted, row
