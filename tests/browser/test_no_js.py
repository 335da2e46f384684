"""The session page without JavaScript (a teacher's locked-down browser), in a real Chromium.

Every control is a plain HTML form: a click posts it, the server answers 303 back to the
page, and the page shows the new step. The sliders, sent on change by htmx, have their own
submit buttons, shown only while htmx is absent.
"""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import api as conftest_api

TIMEOUT = 60_000


def api(server: Any, path: str, body: dict[str, Any] | None = None) -> Any:
    return conftest_api(server, path, body, timeout=120)


def step_no(pg: Any) -> int:
    return int(pg.inner_text(".session-view .step-no"))


def test_controls_knobs_and_inject_without_javascript(browser: Any, live_server: Any) -> None:
    sid = api(live_server, "/sessions", {"preset": "zero-pages-unmerge", "kernel": "6.18"})["id"]
    ctx = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 720})
    try:
        pg = ctx.new_page()
        pg.goto(f"{live_server.url}/session?sid={sid}")
        assert step_no(pg) == 0
        pg.click("#controls button[value=step]")
        pg.wait_for_url("**/session?*step=1*", timeout=TIMEOUT)
        assert step_no(pg) == 1 and api(live_server, f"/sessions/{sid}")["step"] == 1
        assert pg.inner_text("#controls .timeline-out") == "1 / 1"
        pg.click("#controls button[value=step]")
        pg.wait_for_url("**step=2*", timeout=TIMEOUT)
        assert step_no(pg) == 2
        # the timeline slider and its own button (visible: no htmx here)
        go = pg.locator("#controls button.no-htmx[value=seek]")
        assert go.is_visible()
        pg.fill("#controls input.timeline", "1")
        go.click()
        pg.wait_for_url("**step=1*", timeout=TIMEOUT)
        assert step_no(pg) == 1 and api(live_server, f"/sessions/{sid}")["step"] == 1
        # a knob
        pg.fill("#knobs input[data-knob=pages_to_scan]", "42")
        pg.click("#knobs button[type=submit]")
        pg.wait_for_load_state()
        assert api(live_server, f"/sessions/{sid}/snapshot")["knobs"]["pages_to_scan"] == 42
        assert pg.input_value("#knobs input[data-knob=pages_to_scan]") == "42"
        # bad input: a page naming the field, and the way back
        pg.fill("#knobs input[data-knob=sleep_millisecs]", "soon")
        pg.click("#knobs button[type=submit]")
        pg.wait_for_selector("p.error", timeout=TIMEOUT)
        assert "knob.sleep_millisecs" in pg.inner_text("p.error")
        pg.click("a.back-link")
        pg.wait_for_selector("#controls", timeout=TIMEOUT)
        assert step_no(pg) == api(live_server, f"/sessions/{sid}")["step"]
    finally:
        ctx.close()


def test_the_no_htmx_buttons_are_hidden_with_javascript(page: Any, live_server: Any) -> None:
    sid = api(live_server, "/sessions", {"preset": "zero-pages-unmerge", "kernel": "6.18"})["id"]
    page.goto(f"{live_server.url}/session?sid={sid}")
    page.wait_for_selector("#controls", timeout=TIMEOUT)
    assert page.locator("#controls .no-htmx").count() == 2
    assert not any(b.is_visible() for b in page.locator("#controls .no-htmx").all())
    # and htmx still drives the form: a click swaps the partial, no page load
    page.evaluate("() => { window.__same = true; }")
    page.click("#controls button[value=step]")
    page.wait_for_function(
        "() => document.querySelector('#controls .timeline-out').textContent.startsWith('1 /')",
        timeout=TIMEOUT,
    )
    assert page.evaluate("() => window.__same") is True
