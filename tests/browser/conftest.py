"""Browser fixtures: a real uvicorn server on a free port and Debian's Chromium via Playwright.

The tests skip when Chromium or Playwright is missing, unless ``KSMLAB_BROWSER_TESTS=1``
(CI sets it), which makes them fail instead. Every page is cut off from the network: any
request to a host other than the test server is aborted and recorded, and each test ends
by asserting that there were none (the dashboard must work offline, on stage).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import browser_missing

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
REQUIRED = os.environ.get("KSMLAB_BROWSER_TESTS") == "1"
_missing = browser_missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveServer:
    """uvicorn serving the backend's ``create_app`` in a thread."""

    def __init__(self, **settings: Any) -> None:
        import uvicorn

        from app.config import Settings
        from app.server.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(Settings(port=self.port, **settings))
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                ws_max_size=16 << 20)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_server() -> Iterator[LiveServer]:
    try:
        import app.server.app  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"the backend's app factory is missing: {exc}")
    with LiveServer() as server:
        yield server


@pytest.fixture(scope="session")
def browser(chromium: Any) -> Any:
    """The run's shared Chromium (tests/conftest.py)."""
    return chromium


class Offline:
    """Requests that tried to leave localhost (each one aborted)."""

    def __init__(self, server_url: str) -> None:
        self.host = urlsplit(server_url).netloc
        self.outside: list[str] = []

    def route(self, route: Any) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob") or parts.netloc == self.host:
            route.continue_()
        else:
            self.outside.append(url)
            route.abort("internetdisconnected")


@pytest.fixture
def page(browser: Any, live_server: LiveServer) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, device_scale_factor=1)
    offline = Offline(live_server.url)
    context.route("**/*", offline.route)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("framenavigated", lambda f: print("navigated:", f.url))
    pg.on("console", lambda msg: print("console:", msg.text))
    pg.offline = offline  # type: ignore[attr-defined]
    pg.js_errors = errors  # type: ignore[attr-defined]
    yield pg
    context.close()
    assert offline.outside == [], f"requests left localhost: {offline.outside}"
    assert errors == [], f"JavaScript errors: {errors}"


def _screenshot(pg: Any, name: str, **kwargs: Any) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    pg.screenshot(path=str(path), **kwargs)
    return path


@pytest.fixture
def screenshot() -> Any:
    """``screenshot(page, name)`` writes ``docs/screenshots/<name>.png``."""
    return _screenshot
