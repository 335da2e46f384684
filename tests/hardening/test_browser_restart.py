"""The server restarted while a browser is open: the page reconnects and resumes (the
sessions survived, e.g. a network blip or a server restart on the same app), or says clearly
that the session is gone and offers the link that rebuilds it (a new server process).

Uses the run's shared Chromium (``tests/conftest.py`` ``chromium``): skips without Chromium
or Playwright, unless ``KSMLAB_BROWSER_TESTS=1`` (then fails)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import Server

TIMEOUT = 40_000
PRESET = "zero-pages-unmerge"
VIEW = ".session-view"


@pytest.fixture()
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def open_at_step(pg: Any, url: str, step: int) -> str:
    pg.goto(f"{url}/session?preset={PRESET}&kernel=6.18&step={step}")
    wait_step(pg, step)
    wait_status(pg, "live")
    sid: str = pg.get_attribute(VIEW, "data-session")
    return sid


def wait_step(pg: Any, step: int) -> None:
    pg.wait_for_function(
        f"() => document.querySelector('{VIEW}')?.dataset.step === '{step}'", timeout=TIMEOUT
    )


def wait_status(pg: Any, text: str) -> None:
    pg.wait_for_function(
        f"() => (document.querySelector('{VIEW} .conn-status')?.textContent || '')"
        f".includes({text!r})",
        timeout=TIMEOUT,
    )


def test_page_resumes_when_the_session_survived(page: Any) -> None:
    first = Server().__enter__()
    try:
        sid = open_at_step(page, first.url, 3)
    finally:
        first.__exit__(None, None, None)
    wait_status(page, "reconnecting")
    with Server(port=first.port, app=first.app) as again:  # same sessions, new listener
        wait_status(page, "live")
        assert page.get_attribute(VIEW, "data-session") == sid
        page.keyboard.press("ArrowRight")  # the resumed stream still drives the page
        wait_step(page, 4)
        assert again.app.state.manager.sessions[sid].timeline.step == 4


def test_page_says_the_session_is_gone_after_a_fresh_restart(page: Any) -> None:
    first = Server().__enter__()
    try:
        sid = open_at_step(page, first.url, 3)
    finally:
        first.__exit__(None, None, None)
    wait_status(page, "reconnecting")
    with Server(port=first.port):  # a new server process: its sessions are gone
        page.wait_for_selector(f"{VIEW}[data-end='gone'] .conn-status a", timeout=TIMEOUT)
        assert "gone" in page.inner_text(f"{VIEW} .conn-status")
        page.click(f"{VIEW} .conn-status a")  # the link rebuilds it at the same step
        page.wait_for_function(
            f"() => {{ const v = document.querySelector('{VIEW}');"
            f" return v && v.dataset.session && v.dataset.session !== '{sid}'"
            f" && v.dataset.step === '3'; }}",
            timeout=TIMEOUT,
        )


def test_presenter_controls_and_viewer_watches_read_only(chromium: Any) -> None:
    from .conftest import TOKEN

    with Server(token=TOKEN) as live:
        presenter = chromium.new_context().new_page()
        presenter.goto(f"{live.url}/session?preset={PRESET}&kernel=6.18")  # no token: refused
        assert "presenter" in presenter.inner_text("body")
        presenter.goto(f"{live.url}/session?preset={PRESET}&kernel=6.18&token={TOKEN}")
        wait_step(presenter, 0)
        wait_status(presenter, "live")
        sid = presenter.get_attribute(VIEW, "data-session")
        viewer = chromium.new_context().new_page()
        viewer.goto(f"{live.url}/session?sid={sid}")
        wait_status(viewer, "live")
        viewer.keyboard.press("ArrowRight")  # a viewer's control: refused, clearly
        viewer.wait_for_function(  # (the keys post the htmx controls form)
            "() => (document.querySelector('#controls')?.textContent || '')"
            ".includes('read-only viewer')",
            timeout=TIMEOUT,
        )
        assert live.app.state.manager.sessions[sid].timeline.step == 0
        presenter.keyboard.press("ArrowRight")  # the presenter steps; the viewer follows
        wait_step(presenter, 1)
        wait_step(viewer, 1)
        presenter.context.close()
        viewer.context.close()
