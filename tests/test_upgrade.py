"""Upgrading a live database from the released core (0003) to this one (0004
to 0007), and back.

The database holds bars, credentials and events; writers toggle credentials
all through the upgrade, and a listener follows the events across it the way
the released relay does (LISTEN, then read status_events after the last id
handed on; the relay of this release needs 0005's event log, so it takes
over after the upgrade, from the listener's last position). No event is lost
or repeated, no bar drifts, and a rollback restores the 0003 schema and its
behaviour.
"""

from __future__ import annotations

import pytest

from devtools.older import FIRST_RELEASE as V1
from devtools.older import V2_CORE, migrate_up_to
from mpesa_sync import migrations
from tests.support.catalog import describe
from tests.support.cli import run_cli
from tests.support.database import Database, fresh_database, templates
from tests.support.listener import Listener, relayed_ids
from tests.support.relay import RelayProcess, event_ids_after, newest_event_id
from tests.support.servers import Server
from tests.support.writers import TOGGLE, Writers

# The released migrations set a custom parameter in a SET clause, which only a
# superuser may: the databases that can be upgraded from them are superusers' installs.
pytestmark = pytest.mark.roles("superuser")

V2 = "0004_mpesa_sync_v2"
RETENTION = "0005_mpesa_sync_retention_v1"
V3 = "0007_mpesa_sync_v3"


def test_upgrade_from_0003_under_load_loses_and_repeats_no_event(
    server: Server, host_db: Database
) -> None:
    assert migrate_up_to(host_db.dsn, V1)[-1] == V1
    bars = [host_db.add_bar(f"bar {i}") for i in range(12)]
    for i, bar in enumerate(bars):
        host_db.add_credentials(bar, active=i % 2 == 0)
    # what a rollback returns to: 0003 as this release installs it (its
    # functions set their parameter in the body, not with a SET clause)
    with fresh_database(server, templates(host_db.role)[0], role=host_db.role) as at_v1_now:
        migrate_up_to(at_v1_now.dsn, V1, released=False)
        at_v1 = describe(at_v1_now.dsn)
    start = newest_event_id(host_db)
    assert start > 0  # the v1 core wrote events already
    # this release reads a 0003 database, and will not fix one with the old core
    assert run_cli("verify", "--dsn", host_db.dsn).code == 0
    refused = run_cli("reconcile", "--dsn", host_db.dsn)
    assert refused.code == 2
    assert "0004_mpesa_sync_v2 is not applied" in refused.stderr

    with Listener(host_db, start) as listener:
        with Writers(host_db, bars) as writers:
            writers.wait_for_more(50)
            report = migrations.migrate(host_db.dsn)
            writers.wait_for_more(50)
            # this release's relay takes over from where the listener stands
            taken_over_at = listener.last
            with RelayProcess(host_db.dsn, "--since", str(taken_over_at)) as relay:
                relay.wait_listening()
                writers.wait_for_more(50)
                writers.stop()
                newest = newest_event_id(host_db)
                relayed = relayed_ids(relay, newest)
                relay.stop()
        assert writers.errors == []
        listener.wait_for(newest)
    assert report.applied == [V2, RETENTION, V2_CORE, V3]
    table_ids = event_ids_after(host_db, start)
    assert listener.ids == table_ids  # nothing lost, nothing repeated, in order
    assert relayed == [i for i in table_ids if i > taken_over_at]
    assert len(table_ids) >= 150
    assert host_db.drift() == []
    assert host_db.scalar("SELECT count(*) FROM mpesa_sync.pending_changes") == 0

    # back to 0003: its schema exactly, and its behaviour
    assert migrations.rollback(host_db.dsn, count=4) == [V3, V2_CORE, RETENTION, V2]
    assert describe(host_db.dsn) == at_v1
    before = newest_event_id(host_db)
    with host_db.connect(autocommit=False) as conn:
        conn.execute(TOGGLE, (bars[0],))
        # v1 numbers an event in the statement, before its transaction commits
        newest_inside = conn.execute("SELECT max(event_id) FROM mpesa_sync.status_events")
        assert newest_inside.fetchone()[0] > before
        conn.commit()
    assert host_db.drift() == []

    # and forward again
    assert migrations.migrate(host_db.dsn).applied == [V2, RETENTION, V2_CORE, V3]
    with host_db.connect() as conn:
        conn.execute(TOGGLE, (bars[1],))
    assert host_db.drift() == []
    assert newest_event_id(host_db) > before + 1
