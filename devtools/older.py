"""A database as an older release left it: its migrations, none after.

For the upgrade tests, and for the benchmark that compares this release's
sync core with the one DBAs run today (migrations up to 0003).
"""

from __future__ import annotations

from yoyo import get_backend, read_migrations
from yoyo.migrations import MigrationList

from mpesa_sync import migrations
from mpesa_sync.resources import resource_dir

FIRST_RELEASE = "0003_mpesa_sync_settings_v1"  # what DBAs applied before 0004


def migrate_up_to(dsn: str, last: str = FIRST_RELEASE) -> list[str]:
    """Apply the pending migrations up to and including ``last``; their ids."""
    available = read_migrations(str(resource_dir("migrations")))
    backend = get_backend(migrations.yoyo_url(dsn))
    try:
        with backend.lock():
            wanted = MigrationList([m for m in backend.to_apply(available) if m.id <= last])
            backend.apply_migrations(wanted)
            return [m.id for m in wanted]
    finally:
        backend.connection.close()
