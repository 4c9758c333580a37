"""A database as an older release left it: its migrations, none after.

For the upgrade tests, and for the benchmarks that compare this release's
sync core with the v1 core (migrations up to 0003) and the v2 core (up to
0006). The migrations are read from git as they were released (0002 to 0004
have been edited since, in how they set one parameter, so that a table owner
who is no superuser can apply them), and yoyo records them in ``public``, as
releases before 0006 did.
"""

from __future__ import annotations

import functools
import subprocess
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from yoyo import get_backend, read_migrations
from yoyo.migrations import MigrationList

from mpesa_sync import db, migrations
from mpesa_sync.queries import query
from mpesa_sync.resources import resource_dir

FIRST_RELEASE = "0003_mpesa_sync_settings_v1"  # what DBAs applied before 0004
LAST_RELEASE = "0005_mpesa_sync_retention_v1"  # what DBAs applied before 0006
# The v2 sync core as 0006 left it, what DBAs run before 0007: 0006 is in no
# release commit, so apply it with released=False (this checkout's files).
V2_CORE = "0006_mpesa_sync_managed_host_v1"

# The last commit of the release that ended with 0005: its migrations/ folder
# is what DBAs applied.
RELEASE_COMMIT = "43598e6f027148e395fd2af4d7ea734b5f363cdd"

_ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def released_migrations() -> Path:
    """The migrations folder as released, extracted from git once per process."""
    archive = subprocess.run(
        ["git", "-C", str(_ROOT), "archive", "--format=tar", RELEASE_COMMIT, "migrations"],
        check=True,
        capture_output=True,
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="mpesa-sync-release-"))
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder / "migrations"


def migrate_up_to(dsn: str, last: str = FIRST_RELEASE, *, released: bool = True) -> list[str]:
    """Apply the migrations up to and including ``last``; their ids. As
    released (yoyo's tables in public), or with ``released=False`` this
    checkout's files, as this release would have installed them."""
    folder = released_migrations() if released else resource_dir("migrations")
    available = read_migrations(str(folder))
    url = migrations.yoyo_url(dsn, history_schema=None if released else migrations.HISTORY_SCHEMA)
    if not released:
        with db.connection(dsn, autocommit=True) as conn:
            conn.execute(query("create_history_schema"))
    backend = get_backend(url)
    try:
        with backend.lock():
            wanted = MigrationList([m for m in backend.to_apply(available) if m.id <= last])
            backend.apply_migrations(wanted)
            return [m.id for m in wanted]
    finally:
        backend.connection.close()
