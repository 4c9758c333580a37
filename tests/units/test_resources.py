"""The packaged SQL and migrations (mpesa_sync/resources.py).

No database (marked ``no_database``).
"""

from __future__ import annotations

import pytest

from mpesa_sync.resources import migration_ids

pytestmark = pytest.mark.no_database


def test_the_packaged_migrations_are_the_files() -> None:
    ids = migration_ids()
    assert ids[0] == "0001_mpesa_sync_base" and "0005_mpesa_sync_retention_v1" in ids
    assert ids == sorted(ids) and not any(i.endswith(".rollback") for i in ids)
