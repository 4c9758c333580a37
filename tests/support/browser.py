"""Headless Chromium for the browser tests: Debian's chromium package
(installed when missing) driven by Playwright for Python through
``executable_path``; Playwright's own browser download is never used."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def install_chromium() -> None:
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


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium, installed first when missing."""
    install_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
