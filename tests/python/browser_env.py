"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium (scripts/setup.sh installs
it), driven by Playwright, whose own browser download cannot work here. Tests that need no browser
never import Playwright.

- `chromium()`: a launched browser, or the test is skipped when Chromium or Playwright is missing.
- `opened_page(browser, url)`: a page in a context of its own, with the page's script errors
  collected; the context is closed afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Shared memory in /tmp, not /dev/shm: a container's /dev/shm may be small, and parallax's
    # own tests on the other worker use it.
    "--disable-dev-shm-usage",
]
VIEWPORT = {"width": 1280, "height": 900}


@contextmanager
def chromium(expect_timeout_ms: int | None = None) -> Iterator[Any]:
    """A headless Chromium; with `expect_timeout_ms`, every Playwright `expect` waits that long."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (scripts/setup.sh installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    if expect_timeout_ms is not None:
        sync_api.expect.set_options(timeout=expect_timeout_ms)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def opened_page(browser: Any, url: str, timeout_ms: int) -> Iterator[tuple[Any, list[str]]]:
    """`url` opened in a new context; yields the page and the script errors it raised (a test
    asserts there were none); every step waits up to `timeout_ms`."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(timeout_ms)
        page.goto(url)
        yield page, errors
    finally:
        context.close()
