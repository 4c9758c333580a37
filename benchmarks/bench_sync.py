"""What the triggers cost a credential writer: bulk flips and single toggles,
on the same data before and after install."""

from __future__ import annotations

from typing import Any

import psycopg

from benchmarks.common import RUNS, Bench, Result, timed
from mpesa_sync import migrations
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


def prepare(dsn: str, rows: int, *, install: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(resource_dir("sql").joinpath("host_example.sql").read_text())
        conn.execute(LOAD.replace("%(n)s", str(int(rows))))
    if install:
        migrations.migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def flip_samples(dsn: str) -> list[float]:
    samples = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(RUNS):
            conn.execute("VACUUM mpesa_credentials, bars")
            samples.append(timed(lambda: conn.execute(FLIP_ALL)))
    return samples


def toggle_samples(dsn: str, toggles: int, *, durable: bool) -> list[float]:
    samples = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not durable:
            conn.execute("SET synchronous_commit = off")
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM mpesa_credentials ORDER BY id LIMIT %s", (toggles,)
            )
        ]
        cur = conn.cursor()

        def run() -> None:
            for cred in ids:
                cur.execute(TOGGLE_ONE, (cred,))

        for _ in range(RUNS):
            conn.execute("VACUUM mpesa_credentials, bars")
            samples.append(timed(run))
    return samples


def run(bench: Bench) -> list[Result]:
    results: list[Result] = []
    flip_rows = bench.size(100_000, 10_000)
    growth = [bench.size(n, n // 10) for n in (10_000, 100_000, 1_000_000)]
    toggles = bench.size(2_000, 500)

    for rows in sorted({flip_rows, *growth}):
        with bench.database() as before, bench.database() as after:
            prepare(before, rows, install=False)
            prepare(after, rows, install=True)
            bare, ours = flip_samples(before), flip_samples(after)
            main = rows == flip_rows
            results.append(
                Result(
                    name=f"bulk flip, {rows:,} credential rows in one statement",
                    ours=ours,
                    bare=bare,
                    target=2.0 if main else None,
                    note="after vs before install; every row changes its bar, so each flip "
                    f"writes {rows:,} bars, events and notifications",
                )
            )
            if main:
                results.extend(_toggles(before, after, toggles))
    return results


def _toggles(before: str, after: str, toggles: int) -> list[Any]:
    return [
        Result(
            name=f"{toggles:,} single-row toggles, one connection, durable commits",
            ours=toggle_samples(after, toggles, durable=True),
            bare=toggle_samples(before, toggles, durable=True),
            target=1.5,
            note="each toggle is its own transaction and changes its bar's status",
        ),
        Result(
            name=f"{toggles:,} single-row toggles, synchronous_commit=off",
            ours=toggle_samples(after, toggles, durable=False),
            bare=toggle_samples(before, toggles, durable=False),
            note="no wait for the WAL flush: shows the triggers' CPU cost alone",
        ),
    ]
