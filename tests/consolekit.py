"""Helpers for the trainer's console tests: Debian's chromium driven by Playwright, screenshots.

Playwright drives the system browser (``/usr/bin/chromium``, from ``scripts/setup``); its own
browser download (``playwright install``) is never used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def browser_unavailable_reason() -> str | None:
    """Why no real browser can run here, or None."""
    if not shutil.which(CHROMIUM):
        return f"{CHROMIUM} not found (apt-get install chromium; scripts/setup does it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


def need_browser() -> None:
    """Skip (or, with MYNAEMU_REQUIRE_PCSC=1, fail) without a browser."""
    reason = browser_unavailable_reason()
    if reason is not None:
        if os.environ.get("MYNAEMU_REQUIRE_PCSC") == "1":
            pytest.fail(f"MYNAEMU_REQUIRE_PCSC=1 but {reason}")
        pytest.skip(reason)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium (Playwright's sync API)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Any, directory: Path, name: str) -> Path:
    """Save a full-page screenshot as an artefact and say where."""
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path
