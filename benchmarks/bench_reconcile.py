"""reconcile and verify against the bare work, on a million bars with 10% drift.

- reconcile (detection, batches through fix_bars_v1 with their triggers,
  events and notifications, re-check) against one bare set-based
  ``UPDATE ... FROM`` that fixes the same rows with no trigger firing;
- verify (read-only snapshot, counts, 100 drifted bars listed, open alerts)
  against one bare counting query;
- reconcile at growing sizes, to show the cost per bar stays flat.

The drifted database is built once per size, behind the triggers' back, and
copied for every sample, so each sample starts from the same drift. The bare
work runs with the work_mem our commands give themselves: with the server's
default the bare queries fall back to an index probe per bar and look slower
than they need to.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import psycopg
from psycopg import conninfo

from benchmarks.common import RUNS, Bench, Result, timed
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

# The bare work: what a DBA would run by hand on a copy with no trigger.
BARE_FIX_SQL = """
UPDATE public.bars AS b
SET mpesa_enabled = s.expected
FROM (
    SELECT b2.id,
           EXISTS (SELECT 1 FROM public.mpesa_credentials AS c
                   WHERE c.tenant_id = b2.id AND c.is_active) AS expected
    FROM public.bars AS b2
) AS s
WHERE s.id = b.id
  AND b.mpesa_enabled IS DISTINCT FROM s.expected
"""

BARE_COUNT_SQL = """
SELECT count(*)
FROM public.bars AS b
WHERE b.mpesa_enabled IS DISTINCT FROM EXISTS (
    SELECT 1 FROM public.mpesa_credentials AS c WHERE c.tenant_id = b.id AND c.is_active)
"""


def run(bench: Bench) -> list[Result]:
    main_size = bench.size(1_000_000, 20_000)
    growth = [bench.size(10_000, 1_000), bench.size(100_000, 5_000)]
    results = []
    for bars in growth:
        with _drifted_template(bench, bars) as template:
            results.append(_reconcile_result(bench, template, bars, target=None))
    with _drifted_template(bench, main_size) as template:
        results.append(_reconcile_result(bench, template, main_size, target=1.5))
        results.append(_verify_result(bench, template, main_size))
    return results


@contextmanager
def _drifted_template(bench: Bench, bars: int) -> Iterator[str]:
    """A migrated database holding ``bars`` bars with 10% drift; yields its name."""
    with bench.database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(resource_dir("sql").joinpath("host_example.sql").read_text())
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


def _reconcile_result(bench: Bench, template: str, bars: int, target: float | None) -> Result:
    drifted = round(bars * DRIFT)
    ours: list[float] = []
    bare: list[float] = []
    for _ in range(RUNS):
        with _copy(bench, template) as dsn:
            ours.append(timed(partial(_our_fix, dsn, drifted)))
        with _copy(bench, template) as dsn:
            bare.append(timed(partial(_bare_fix, dsn, drifted)))
    per_bar = statistics.median(ours) / drifted * 1e6
    return Result(
        name=f"reconcile, {bars:,} bars, {drifted:,} drifted",
        ours=ours,
        bare=bare,
        target=target,
        note=f"bare: one UPDATE ... FROM, no trigger, same work_mem; {per_bar:.0f} us/drifted bar",
    )


def _our_fix(dsn: str, drifted: int) -> None:
    report = reconcile(dsn)
    assert report.fixed == drifted and report.ok, report


def _bare_fix(dsn: str, drifted: int) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("SET session_replication_role = replica")  # no trigger fires
        conn.execute(query("set_work_mem"))  # the memory reconcile gives itself
        changed = conn.execute(BARE_FIX_SQL).rowcount
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
        row = conn.execute(BARE_COUNT_SQL).fetchone()
    assert row is not None and row[0] == drifted, row
