"""What the code and the SQL promise each other (mpesa_sync/queries.py and sql/).

No database (marked ``no_database``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mpesa_sync.queries import load_queries, query
from mpesa_sync.resources import resource_dir

pytestmark = pytest.mark.no_database

ROOT = Path(__file__).resolve().parents[2]


PACKAGE = ROOT / "mpesa_sync"


def test_every_query_the_package_names_exists() -> None:
    named = set()
    for path in PACKAGE.rglob("*.py"):
        named |= set(re.findall(r'query\("(\w+)"\)', path.read_text()))
        named |= set(re.findall(r'"(relay_\w+_between)"', path.read_text()))
    assert named
    for name in named:
        assert query(name)


def test_a_query_defined_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.sql").write_text("-- name: one\nSELECT 1;\n")
    (tmp_path / "b.sql").write_text("-- name: one\nSELECT 2;\n")
    with pytest.raises(ValueError, match="defined twice"):
        load_queries(tmp_path)


def test_development_queries_stay_out_of_the_product_namespace() -> None:
    product = load_queries(resource_dir("sql") / "queries")
    dev = load_queries(resource_dir("sql") / "dev" / "queries")
    assert dev and not set(dev) & set(product)
    assert not any(name.startswith(("demo_", "profile_")) for name in product)


def test_advisory_lock_keys_are_the_ones_locks_sql_lists() -> None:
    listed = set(re.findall(r"^--\s+(\d+)\s", (ROOT / "sql/queries/locks.sql").read_text(), re.M))
    used: dict[str, set[str]] = {}
    for path in [*ROOT.joinpath("sql").rglob("*.sql"), *ROOT.joinpath("migrations").glob("*.sql")]:
        for key in re.findall(r"pg_advisory\w*\((\d+)\)", path.read_text()):
            used.setdefault(key, set()).add(path.name)
    assert len(listed) == 3
    assert set(used) == listed
    # migrate's, reconcile's and the event ids' keys are used where locks.sql says
    assert used["470037132129"] == {
        "schema.sql",
        "0002_mpesa_sync_v1.sql",
        "0004_mpesa_sync_v2.sql",
        "0004_mpesa_sync_v2.rollback.sql",
        "0007_mpesa_sync_v3.sql",
        "0007_mpesa_sync_v3.rollback.sql",
    }


def test_sql_sources_cite_files_that_exist() -> None:
    cited = set()
    for path in [
        *ROOT.joinpath("sql").rglob("*.sql"),
        *PACKAGE.rglob("*.py"),
        *ROOT.joinpath("devtools").rglob("*.py"),
    ]:
        text = path.read_text()
        cited |= set(re.findall(r"\b((?:tests|sql|benchmarks|docs)/[\w/]+\.(?:py|sql|md))", text))
    assert cited
    assert sorted(c for c in cited if not (ROOT / c).exists()) == []
