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


class _Chromium:
    """The run's one Playwright and Chromium, started on first use and stopped as soon as
    the next test does not need it (``pytest_runtest_teardown`` below).

    Playwright's sync API keeps its event loop marked as running in the main thread for as
    long as it is started, so any later test that calls ``asyncio.run`` would fail with
    "cannot be called from a running event loop". Stopping it between runs of browser tests
    keeps the whole suite runnable in one process, in any order; consecutive browser tests
    (a directory's worth) still share one instance.
    """

    def __init__(self) -> None:
        self.pw: Any = None
        self.browser: Any = None

    def get(self) -> Any:
        if self.browser is None:
            from playwright.sync_api import sync_playwright

            self.pw = sync_playwright().start()
            self.browser = self.pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        return self.browser

    def stop(self) -> None:
        browser, pw, self.browser, self.pw = self.browser, self.pw, None, None
        try:
            if browser is not None:
                browser.close()
        finally:
            if pw is not None:
                pw.stop()


_CHROMIUM = _Chromium()


@pytest.fixture
def chromium() -> Any:
    """One headless Debian Chromium shared by consecutive browser tests.

    Playwright's sync API runs one event loop per thread, so the test directories share
    this instance instead of each starting their own; it is stopped when the next test
    does not use it (see ``_Chromium``).
    """
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        browser_missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        browser_missing("Playwright for Python is not installed")
    return _CHROMIUM.get()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After a test's own teardown: stop Chromium unless the next test uses it too."""
    try:
        return (yield)
    finally:
        if _CHROMIUM.browser is not None and (
            nextitem is None or "chromium" not in getattr(nextitem, "fixturenames", ())
        ):
            _CHROMIUM.stop()
