"""Shared test fixtures: where the reference material (``../shared``) lives."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import tempfile
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
# the servers' recipe store (app.server.store): a fresh directory per run, never the user's
os.environ.setdefault("KSMLAB_DATA_DIR", tempfile.mkdtemp(prefix="ksmlab-test-data-"))


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` in a thread of its own: the run's shared Playwright (sync API) may
    already hold an event loop in the main thread, whatever order the tests run in."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def shared_dir() -> Path:
    env = os.environ.get("KSMLAB_SHARED")
    return Path(env) if env else REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not (path / "scenarios").is_dir():
        pytest.skip(f"reference material not found at {path} (set KSMLAB_SHARED)")
    return path


CHROMIUM = os.environ.get("KSMLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_missing(reason: str) -> None:
    """Skip a browser test, or fail it when ``KSMLAB_BROWSER_TESTS=1`` (CI)."""
    if os.environ.get("KSMLAB_BROWSER_TESTS") == "1":
        pytest.fail(f"KSMLAB_BROWSER_TESTS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One headless Debian Chromium for every browser test of the run.

    Playwright's sync API runs one event loop per thread, so the test directories share
    this instance instead of each starting their own.
    """
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        browser_missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        browser_missing("Playwright for Python is not installed")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
