"""Browser fixtures: a real uvicorn server on a free port and Debian's Chromium via Playwright.

The tests skip when Chromium or Playwright is missing, unless ``KSMLAB_BROWSER_TESTS=1``
(CI sets it), which makes them fail instead. Every page is cut off from the network: any
request to a host other than the test server is aborted and recorded, and each test ends
by asserting that there were none (the dashboard must work offline, on stage).
"""

from __future__ import annotations

import json
import os
import urllib.request
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


def api(server: Any, path: str, body: dict[str, Any] | None = None, timeout: float = 300) -> Any:
    """The test server's JSON API: GET ``/api{path}``, or POST ``body`` as JSON."""
    req = urllib.request.Request(
        f"{server.url}/api{path}",
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def dashboard_server(**settings: Any) -> Any:
    """The backend's ``create_app`` served by uvicorn in a thread."""
    from app.config import Settings
    from app.server.app import create_app
    from app.server.threaded import ThreadedServer, free_port

    port = free_port()
    return ThreadedServer(create_app(Settings(port=port, **settings)), port, ws_max_size=16 << 20)


@pytest.fixture(scope="session")
def live_server() -> Iterator[Any]:
    try:
        import app.server.app  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"the backend's app factory is missing: {exc}")
    with dashboard_server() as server:
        yield server


@pytest.fixture
def browser(chromium: Any) -> Any:
    """The run's shared Chromium (tests/conftest.py), shared by consecutive browser tests."""
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
def page(browser: Any, live_server: Any) -> Iterator[Any]:
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
