"""The customer's page in a real headless Chromium: M-Pesa appears and
disappears live as staff flip the bar's credentials, without a reload; and
the same page served from the app's own origin, reading a relay on another
origin, which the browser allows only when the relay allows that origin.

Uses Debian's ``chromium`` package (installed here when missing) and
Playwright for Python with ``executable_path``; Playwright's own browser
download is never used.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer

import pytest
from playwright.sync_api import Browser, Page, expect

from mpesa_sync import migrations
from mpesa_sync.relay.app import STATIC_DIR
from tests.support.browser import chromium
from tests.support.database import Database
from tests.support.http import QuietHandler, serving
from tests.support.relay import RelayProcess, set_active


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@contextmanager
def live_page(browser: Browser, url: str) -> Iterator[tuple[Page, list[str]]]:
    """The page at ``url`` (a bar whose M-Pesa is off), once it shows the bar
    and its stream is live; with the console messages it logs from the start.
    ``window.__sameDocument`` is set, and survives only while the page is not
    reloaded."""
    page = browser.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    try:
        page.goto(url)
        expect(page.locator("#no-mpesa")).to_be_visible()
        expect(page.locator("#live-text")).to_have_text("live")
        page.evaluate("window.__sameDocument = true")
        yield page, console
    finally:
        page.close()


@pytest.mark.browser
def test_page_shows_mpesa_appear_and_disappear_live(db: Database, browser: Browser) -> None:
    bar = db.add_bar("Mama Oliech")
    db.add_credentials(bar, "production", active=False, shortcode="600126")
    with RelayProcess(db.dsn, "--http", "127.0.0.1:0") as relay:
        url = relay.http_url()
        relay.wait_listening()
        with live_page(browser, f"{url}/?bar_id={bar}") as (page, _):
            mpesa, no_mpesa = page.locator("#mpesa"), page.locator("#no-mpesa")
            expect(mpesa).to_be_hidden()

            set_active(db, bar, True)
            expect(mpesa).to_be_visible()
            expect(page.locator("#mpesa-shortcode")).to_have_text("600126")
            expect(no_mpesa).to_be_hidden()

            set_active(db, bar, False)
            expect(mpesa).to_be_hidden()
            expect(no_mpesa).to_be_visible()

            assert page.evaluate("window.__sameDocument") is True
        relay.stop()


@pytest.mark.browser
def test_page_re_reads_its_bar_on_a_reset(db: Database, browser: Browser) -> None:
    """The relay resets under an open stream (the schema rolled back and
    installed again, the bar changed in between): the page gets no event for
    that change, only the reset frame, and must re-read the bar to show it."""
    bar = db.add_bar("Mama Oliech")
    db.add_credentials(bar, "production", active=False, shortcode="600126")
    with RelayProcess(db.dsn, "--http", "127.0.0.1:0") as relay:
        url = relay.http_url()
        relay.wait_listening()
        with live_page(browser, f"{url}/?bar_id={bar}") as (page, _):
            migrations.rollback(db.dsn, count=None)
            set_active(db, bar, True)  # nothing installed: no event, the bar drifts
            migrations.migrate(db.dsn)  # the install fixes it: an event of the new log
            (reset,) = relay.events(1)
            assert reset["reset"] is True and reset["newest_event_id"] == 1
            expect(page.locator("#mpesa")).to_be_visible()
            expect(page.locator("#mpesa-shortcode")).to_have_text("600126")
            assert page.evaluate("window.__sameDocument") is True
        relay.stop()


@pytest.mark.browser
def test_page_explains_a_bad_bar_id(db: Database, browser: Browser) -> None:
    with RelayProcess(db.dsn, "--http", "127.0.0.1:0") as relay:
        url = relay.http_url()
        page = browser.new_page()
        try:
            page.goto(f"{url}/?bar_id=not-a-uuid")
            expect(page.locator("#status")).to_contain_text("malformed bar id")
            page.goto(f"{url}/")
            expect(page.locator("#status")).to_contain_text("No bar given")
        finally:
            page.close()
        relay.stop()


# -- the page on the app's own origin, the relay on another ---------------------------


class AppSite(ThreadingHTTPServer):
    """The customer app's origin: serves one page, the bundled page's markup
    with its script (and the snippet in it) loaded from the relay."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _AppPage)
        self.html = ""

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def serve(self, relay_url: str) -> None:
        page = (STATIC_DIR / "index.html").read_text()
        script = f'<script src="{relay_url}/static/page.js" data-relay="{relay_url}"></script>'
        self.html = page.replace('<script src="/static/page.js"></script>', script)
        assert script in self.html


class _AppPage(QuietHandler):
    server: AppSite

    def do_GET(self) -> None:
        self.reply(200, self.server.html.encode(), "text/html; charset=utf-8")


@pytest.fixture
def site() -> Iterator[AppSite]:
    with serving(AppSite()) as server:
        yield server


@pytest.mark.browser
def test_a_page_on_another_origin_streams_from_a_relay_that_allows_it(
    db: Database, browser: Browser, site: AppSite
) -> None:
    bar = db.add_bar("Mama Oliech")
    db.add_credentials(bar, "production", active=False, shortcode="600126")
    with RelayProcess(db.dsn, "--http", "127.0.0.1:0", "--allow-origin", site.origin) as relay:
        url = relay.http_url()
        relay.wait_listening()
        assert site.origin.rsplit(":", 1)[1] != url.rsplit(":", 1)[1]  # two origins
        site.serve(url)
        with live_page(browser, f"{site.origin}/?bar_id={bar}") as (page, console):
            set_active(db, bar, True)
            expect(page.locator("#mpesa")).to_be_visible()
            expect(page.locator("#mpesa-shortcode")).to_have_text("600126")
            set_active(db, bar, False)
            expect(page.locator("#no-mpesa")).to_be_visible()
            assert page.evaluate("document.location.origin") == site.origin
        assert not [m for m in console if "CORS" in m], console
        relay.stop()


@pytest.mark.browser
def test_the_browser_refuses_a_relay_that_does_not_allow_the_page_origin(
    db: Database, browser: Browser, site: AppSite
) -> None:
    bar = db.add_bar("Mama Oliech")
    db.add_credentials(bar, "production", active=True, shortcode="600126")
    with RelayProcess(
        db.dsn, "--http", "127.0.0.1:0", "--allow-origin", "http://127.0.0.1:1"
    ) as relay:
        url = relay.http_url()
        relay.wait_listening()
        site.serve(url)
        page = browser.new_page()
        try:
            with page.expect_console_message(lambda m: "CORS policy" in m.text) as refusal:
                page.goto(f"{site.origin}/?bar_id={bar}")
            assert site.origin in refusal.value.text
            expect(page.locator("#status")).to_contain_text("could not load the payment methods")
            expect(page.locator("#mpesa")).to_be_hidden()  # though M-Pesa is on
            expect(page.locator("#live-text")).not_to_have_text("live")
        finally:
            page.close()
        relay.stop()
