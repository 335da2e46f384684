"""A whole VM host in the browser (issue 18): a 16,777,216-page session's overview shows every
page (bucket counts sum to the pages), a planted minority of KSM-placed zero pages is visible
in the overview's pixels, and the grid zooms from the overview to a single page and back with
the inspector on it. ``KSMLAB_OVERVIEW_PAGES`` (pages per guest, 4 guests; default 4,194,304)
makes it smaller for a quick run (above 262,144: a session of 1,048,576 pages or fewer gets
whole snapshots, not an overview); the screenshot is taken at the full size only. The
guests' labels sit on their lanes, at the overview and zoomed in (the page grid's rule)."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from app.server import overview as ov
from tests.browser.conftest import Offline, dashboard_server

GUEST_PAGES = int(os.environ.get("KSMLAB_OVERVIEW_PAGES", str(4_194_304)))
GUESTS = 4
TOTAL = GUESTS * GUEST_PAGES
PLANTED = (GUEST_PAGES * 3) // 4 + 12_345  # among guest 2's unique pages


def post(url: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        url,
        data=json.dumps(body or {}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=1200) as r:
        return json.loads(r.read() or b"null")


@pytest.fixture(scope="module")
def host() -> Iterator[tuple[Any, str]]:
    sc = ov.vm_host_scenario(guests=GUESTS, pages=GUEST_PAGES, planted=(PLANTED,))
    with dashboard_server(max_pages=TOTAL, max_body_bytes=4 << 20) as srv:
        sid = post(f"{srv.url}/api/sessions", {"scenario": sc})["id"]
        post(f"{srv.url}/api/sessions/{sid}/step", {"n": len(sc["steps"])})
        post(f"{srv.url}/api/sessions/{sid}/step", {"n": 2, "grain": "pass"})
        yield srv, sid


@pytest.fixture
def big_page(browser: Any, host: tuple[Any, str]) -> Iterator[Any]:
    srv, _ = host
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, device_scale_factor=1)
    offline = Offline(srv.url)
    context.route("**/*", offline.route)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert offline.outside == []
    assert errors == [], f"JavaScript errors: {errors}"


GRID = "() => window.__ksm.views[0].grid"


def planted_pixels(pg: Any, page: int) -> list[list[int]]:
    """The screen pixels of the bucket holding ``page`` of vm2 (the canvas as drawn)."""
    return pg.evaluate(
        f"""(page) => {{
        const g = ({GRID})(), o = g.ov, lane = o.lanes.find((l) => l.proc === "vm2");
        const b = Math.floor(page / o.bucket) * o.bucket;
        const [x, y] = o.xy(lane, b);
        const X = Math.floor(g.ox + x * g.scale), Y = Math.floor(g.oy + y * g.scale);
        const w = Math.max(1, Math.ceil(o.side * g.scale)) + 1;
        const d = g.ctx.getImageData(X, Y, w, w).data, out = [];
        for (let i = 0; i < d.length; i += 4) out.push([d[i], d[i + 1], d[i + 2]]);
        return out;
    }}""",
        page,
    )


def assert_labels_on_lanes(pg: Any, procs: list[str]) -> None:
    """The labels the grid published (``data-geometry``) are ``procs``' and each one lies
    within the part of its lane's rows on screen."""
    try:
        pg.wait_for_function(
            f"""(procs) => {{ const c = ({GRID})().canvas;
            return !!c.dataset.geometry &&
              JSON.stringify(JSON.parse(c.dataset.geometry).labels.map((l) => l.proc))
                === JSON.stringify(procs); }}""",
            arg=procs,
            timeout=30_000,
        )
    except Exception:
        got = pg.get_attribute("canvas.page-grid", "data-geometry")
        raise AssertionError(f"labels for {procs} not drawn: {got}") from None
    geo = json.loads(pg.get_attribute("canvas.page-grid", "data-geometry") or "{}")
    for label in geo["labels"]:
        top, bottom = max(label["row_top"], 0), min(label["row_bottom"], geo["height"])
        assert top - 0.5 <= label["top"] and label["bottom"] <= bottom + 0.5, (label, geo)
        assert label["lines"] == 2, label  # tall lanes: name and mapping over the page count
        assert label["right"] <= geo["gutter"] + 1, (label, geo["gutter"])  # never cut


def test_the_overview_shows_the_whole_host_and_zooms_to_a_page_and_back(
    big_page: Any, host: tuple[Any, str], screenshot: Any
) -> None:
    srv, sid = host
    pg = big_page
    pg.goto(f"{srv.url}/session?sid={sid}")
    pg.wait_for_function(
        f"() => document.querySelector('canvas.page-grid').dataset.pages === '{TOTAL}'",
        timeout=120_000,
    )
    counts = json.loads(pg.get_attribute("canvas.page-grid", "data-kind-counts") or "{}")
    assert sum(counts.values()) == TOTAL
    assert counts["ksm_zero"] == GUESTS * (GUEST_PAGES // 4) + 1
    # the viewport the grid asked for at fit: the overview only
    pg.wait_for_function(
        f"""() => {{ const g = ({GRID})(); const vp = g.canvas.dataset.viewport;
        return !!vp && JSON.parse(vp).bucket === g.ov.bucket; }}""",
        timeout=60_000,
    )
    pg.wait_for_timeout(300)
    magenta = [255, 32, 200]  # palette.js KIND_COLOURS.ksm_zero
    assert magenta in planted_pixels(pg, PLANTED), "the planted zero page is hidden"
    # each guest's label sits on its own lane (grid_overlay.labels, as in the page grid)
    assert_labels_on_lanes(pg, [f"vm{i + 1}" for i in range(GUESTS)])
    if TOTAL == 16_777_216:
        screenshot(pg, "overview-16m")

    # zoom to the planted page: per-page data arrives for what is on screen
    pg.evaluate(f"() => ({GRID})().zoomToPages('vm2', 'ram', {PLANTED}, {PLANTED + 1})")
    pg.wait_for_function(
        f"""() => {{ const g = ({GRID})(), lane = g.ov.lanes.find((l) => l.proc === 'vm2');
        return !!g.ov.detailAt(lane, {PLANTED}); }}""",
        timeout=60_000,
    )
    pg.wait_for_timeout(300)
    x, y = pg.evaluate(
        f"""() => {{ const g = ({GRID})(), lane = g.ov.lanes.find((l) => l.proc === 'vm2');
        const [x, y] = g.ov.xy(lane, {PLANTED});
        const r = g.canvas.getBoundingClientRect();
        return [r.left + g.ox + (x + 0.5) * g.scale, r.top + g.oy + (y + 0.5) * g.scale]; }}"""
    )
    assert pg.evaluate(f"() => ({GRID})().scale") >= 26  # one labelled cell per page
    assert_labels_on_lanes(pg, ["vm2"])  # the lane on screen keeps its label
    with urllib.request.urlopen(f"{srv.url}/api/sessions/{sid}/pages/vm2/ram/{PLANTED}") as r:
        api = json.loads(r.read())
    pg.mouse.click(x, y)
    pg.wait_for_function(
        f"() => document.querySelector('.inspector').dataset.selected === 'vm2/ram/{PLANTED}'"
    )
    # the page's own text, not the placeholder (which names the PTE too)
    pg.wait_for_function(
        "(why) => document.querySelector('.inspector').innerText.includes(why)",
        arg=api["why"],
        timeout=30_000,
    )
    text = pg.inner_text(".inspector")
    assert api["why"] in text, (api["why"], text)
    assert "zero" in text.lower()

    # back to the overview (0 on the focused grid), and a bucket in the inspector
    pg.focus("canvas.page-grid")
    pg.keyboard.press("0")
    pg.wait_for_function(f"() => ({GRID})().scale < 1")
    # the overview's viewport is asked for and its snapshot drawn
    pg.wait_for_function(
        f"""() => {{ const g = ({GRID})(); const vp = JSON.parse(g.canvas.dataset.viewport);
        return vp.detail.length === 0 && vp.bucket === g.ov.bucket; }}""",
        timeout=60_000,
    )
    box = pg.evaluate(
        f"""() => {{ const g = ({GRID})(), lane = g.ov.lanes[0];
        const [x, y] = g.ov.xy(lane, 0); const r = g.canvas.getBoundingClientRect();
        return [r.left + g.ox + (x + 1) * g.scale, r.top + g.oy + (y + 1) * g.scale]; }}"""
    )
    pg.mouse.click(*box)
    pg.wait_for_selector(".inspector .bucket-counts")
    size = pg.inner_text(".inspector .bucket-counts dd:not([data-kind])")
    cells = pg.eval_on_selector_all(
        ".inspector .bucket-counts dd[data-kind]", "els => els.map((e) => e.textContent)"
    )
    assert sum(int(c.replace(",", "")) for c in cells) == int(size.replace(",", ""))
    assert pg.is_visible(".inspector button.zoom-in")
