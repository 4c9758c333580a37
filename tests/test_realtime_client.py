"""The supabase-js client (mpesa_sync/static/mpesa-status.js) in a real
headless Chromium, with the real ``@supabase/supabase-js`` from npm, against
a stand-in of Supabase's API (tests/support/realtime_server.py) whose
broadcasts come from the real sink in the database.

supabase-js is installed into tests/js/node_modules from tests/js's lock file
when missing; Chromium as tests/test_browser.py installs it.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from mpesa_sync import migrations, realtime
from mpesa_sync.resources import migration_ids
from tests.support.browser import chromium
from tests.support.database import Database
from tests.support.realtime import install_standin
from tests.support.realtime_server import JS_DIR, SUPABASE_UMD, RealtimeStandIn, realtime_standin
from tests.support.relay import set_active
from tests.support.waiting import wait_for

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module", autouse=True)
def supabase_js() -> None:
    """The real supabase-js from npm, as tests/js/package-lock.json pins it."""
    if SUPABASE_UMD.exists():
        return
    if shutil.which("npm") is None:
        pytest.fail("no npm to install @supabase/supabase-js (tests/js/package.json)")
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0 or not SUPABASE_UMD.exists():
        pytest.fail(f"could not install supabase-js: {result.stderr.strip()[-500:]}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def live(db: Database) -> str:
    """Realtime's schema and the sink enabled by the owner who is no superuser."""
    assert db.role == "owner"
    install_standin(db)
    realtime.enable(db.dsn)
    return db.dsn


class Watch:
    """One page watching one bar through watchMpesaStatus."""

    def __init__(self, page: Page, standin: RealtimeStandIn) -> None:
        self.page, self.standin = page, standin

    def states(self) -> list[dict[str, Any] | None]:
        result: list[dict[str, Any] | None] = self.page.evaluate("window.states")
        return result

    def shows(self, mpesa: str, event_id: int) -> None:
        expect(self.page.locator("#mpesa")).to_have_text(mpesa)
        expect(self.page.locator("#event")).to_have_text(str(event_id))


@pytest.fixture
def watch(db: Database, live: str, browser: Browser) -> Iterator[tuple[Watch, uuid.UUID]]:
    bar = db.add_bar("Mama Oliech")
    db.add_credentials(bar, "production", active=False)
    with realtime_standin(db) as (standin, url):
        page = browser.new_page()
        try:
            page.goto(f"{url}/?bar={bar}")
            watching = Watch(page, standin)
            watching.shows("false", 0)
            wait_for("the channel joined", standin.connected)
            yield watching, bar
        finally:
            page.close()


def newest(db: Database) -> int:
    return int(db.scalar("SELECT max(event_id) FROM mpesa_sync.status_events"))


def test_live_updates(db: Database, watch: tuple[Watch, uuid.UUID]) -> None:
    page, bar = watch
    set_active(db, bar, True)
    page.shows("true", newest(db))
    set_active(db, bar, False)
    page.shows("false", newest(db))
    assert page.standin.reads == 1  # one state call, at the first SUBSCRIBED
    assert [s["mpesa_enabled"] for s in page.states() if s] == [False, True, False]


def test_a_stale_or_duplicate_broadcast_is_ignored(
    db: Database, watch: tuple[Watch, uuid.UUID]
) -> None:
    page, bar = watch
    set_active(db, bar, True)
    page.shows("true", 1)
    (held,) = [s for s in page.states() if s and s["event_id"] == 1]
    topic = f"mpesa_status:{bar}"
    stale = {"bar_id": str(bar), "generation": held["generation"], "mpesa_enabled": False}
    page.standin.broadcast(topic, {**stale, "event_id": 1})  # a duplicate of what it holds
    page.standin.broadcast(topic, {**stale, "event_id": 0})  # older still
    set_active(db, bar, False)  # a real newer event, after both on the same socket
    set_active(db, bar, True)
    page.shows("true", 3)
    assert [(s["event_id"], s["mpesa_enabled"]) for s in page.states() if s] == [
        (0, False),
        (1, True),
        (2, False),
        (3, True),
    ]


def test_a_broadcast_lost_while_disconnected_is_recovered_on_resubscribe(
    db: Database, watch: tuple[Watch, uuid.UUID]
) -> None:
    page, bar = watch
    standin = page.standin
    standin.accepting = False
    standin.close_all()
    wait_for("the socket closed", lambda: standin.connected() == 0)
    set_active(db, bar, True)
    event_id = newest(db)
    wait_for("the broadcast went out", lambda: event_id in standin.delivered)
    assert standin.delivered[event_id] == 0  # nobody was there to get it
    standin.accepting = True
    page.shows("true", event_id)  # read again on the new SUBSCRIBED
    assert standin.reads == 2


def test_a_new_generation_is_read_again(
    db: Database, live: str, watch: tuple[Watch, uuid.UUID]
) -> None:
    """The event log replaced (0005 rolled back and applied again: a new
    generation) while the page watches; the bar changed in between, when
    nothing was sent. The first broadcast of the new log makes it read again."""
    page, bar = watch
    (before,) = [s for s in page.states() if s]
    ids = migration_ids()
    # back to before 0005's event log (the sink is taken out first)
    migrations.rollback(db.dsn, count=len(ids) - ids.index("0005_mpesa_sync_retention_v1"))
    set_active(db, bar, True)  # an event, but no broadcast
    migrations.migrate(db.dsn)
    realtime.enable(live)
    set_active(db, bar, False)  # the new log's broadcast
    page.shows("false", newest(db))
    set_active(db, bar, True)
    page.shows("true", newest(db))
    generations = {s["generation"] for s in page.states() if s}
    assert len(generations) == 2 and before["generation"] in generations
    assert page.standin.reads == 2
