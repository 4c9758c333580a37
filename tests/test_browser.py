"""The customer's page in a real headless Chromium: M-Pesa appears and
disappears live as staff flip the bar's credentials, without a reload.

Uses Debian's ``chromium`` package (installed here when missing) and
Playwright for Python with ``executable_path``; Playwright's own browser
download is never used.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.support.database import Database
from tests.support.relay import RelayProcess, set_active

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _install_chromium() -> None:
    """Debian's chromium package; refreshes the package lists once if needed."""
    if CHROMIUM.exists():
        return
    if shutil.which("apt-get") is None:
        pytest.fail("no /usr/bin/chromium and no apt-get to install Debian's chromium package")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, check=False)
        result = subprocess.run(install, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.fail(f"could not install chromium: {result.stderr.strip()[-500:]}")
    assert CHROMIUM.exists()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    _install_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.mark.browser
def test_page_shows_mpesa_appear_and_disappear_live(db: Database, browser: Browser) -> None:
    bar = db.add_bar("Mama Oliech")
    db.add_credentials(bar, "production", active=False, shortcode="600126")
    with RelayProcess(db.dsn, "--http", "127.0.0.1:0") as relay:
        url = relay.http_url()
        relay.wait_listening()
        page = browser.new_page()
        try:
            page.goto(f"{url}/?bar_id={bar}")
            mpesa, no_mpesa = page.locator("#mpesa"), page.locator("#no-mpesa")
            expect(no_mpesa).to_be_visible()
            expect(mpesa).to_be_hidden()
            expect(page.locator("#live-text")).to_have_text("live")
            # Survives only while the page is not reloaded.
            page.evaluate("window.__sameDocument = true")

            set_active(db, bar, True)
            expect(mpesa).to_be_visible()
            expect(page.locator("#mpesa-shortcode")).to_have_text("600126")
            expect(no_mpesa).to_be_hidden()

            set_active(db, bar, False)
            expect(mpesa).to_be_hidden()
            expect(no_mpesa).to_be_visible()

            assert page.evaluate("window.__sameDocument") is True
        finally:
            page.close()
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
