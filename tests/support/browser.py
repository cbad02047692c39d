"""Headless Chromium for the browser tests: Debian's ``/usr/bin/chromium`` driven by Playwright
(never a downloaded browser: ``playwright install`` cannot reach its site here).

The flags keep Chromium from reaching for the network (background updates, sync), which this
machine refuses. Tests that need the browser carry ``needs_chromium``: they are skipped, with the
reason, only where Chromium is not installed; CI installs it (``.ci/run``), so there they run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt install)"
)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a Playwright ``Browser``), closed when the block ends."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
