"""The dashboard in a real browser: grid, inspector, keyboard, charts, side by side, offline.

What the grid shows is checked on the canvas itself (pixels of the KSM-placed zero page
colour) and on the grid's own per-kind counts (``data-kind-counts``), never by asking the
server. Screenshots of the main views go to ``docs/screenshots/``.
"""

from __future__ import annotations

import json
from typing import Any

PRESET = "zero-pages-unmerge"
KSM_ZERO_RGB = (255, 32, 200)  # static/js/palette.js KIND_COLOURS.ksm_zero
ZERO_RGB = (225, 228, 232)  # KIND_COLOURS.zero
TIMEOUT = 30_000

PIXELS_JS = """([sel, rgb]) => {
  const cv = document.querySelector(sel);
  const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4)
    if (d[i] === rgb[0] && d[i + 1] === rgb[1] && d[i + 2] === rgb[2]) n++;
  return n;
}"""


def counts(pg: Any, view: str) -> dict[str, int]:
    raw = pg.get_attribute(f"{view} canvas.page-grid", "data-kind-counts")
    return json.loads(raw) if raw else {}


def pixels(pg: Any, view: str, rgb: tuple[int, int, int]) -> int:
    n: int = pg.evaluate(PIXELS_JS, [f"{view} canvas.page-grid", list(rgb)])
    return n


def wait_count(pg: Any, view: str, kind: str, op: str, n: int) -> None:
    pg.wait_for_function(
        f"""() => {{
          const c = document.querySelector('{view} canvas.page-grid').dataset.kindCounts;
          return c && JSON.parse(c)['{kind}'] {op} {n};
        }}""",
        timeout=TIMEOUT,
    )


def step_until(pg: Any, view: str, kind: str, n: int, key: str = "ArrowRight") -> None:
    """Press the step key until the grid shows ``n`` pages of ``kind`` (at most 80 steps)."""
    for _ in range(80):
        if counts(pg, view).get(kind, 0) >= n:
            return
        before = pg.get_attribute(view, "data-step")
        pg.keyboard.press(key)
        pg.wait_for_function(
            f"() => document.querySelector('{view}').dataset.step !== '{before}'", timeout=TIMEOUT
        )
    raise AssertionError(f"{kind} never reached {n}: {counts(pg, view)}")


def settle(pg: Any) -> None:
    """Let the flashes fade (they are drawn over the cells for 0.7 s)."""
    pg.wait_for_timeout(900)


def open_session(pg: Any, url: str, query: str) -> str:
    pg.goto(f"{url}/session?{query}")
    pg.wait_for_selector(".session-view[data-session]")
    pg.wait_for_function(
        "() => document.querySelector('.session-view canvas.page-grid').dataset.kindCounts",
        timeout=TIMEOUT,
    )
    return ".session-view"


# ---------------------------------------------------------------------------------- tests


def test_index_lists_presets_offline(page: Any, live_server: Any, screenshot: Any) -> None:
    page.goto(live_server.url + "/")
    card = page.locator(f'button[data-preset="{PRESET}"]')
    assert card.count() == 1
    assert page.locator("#open-compare").count() == 1
    assert page.evaluate("() => typeof htmx") == "object"
    screenshot(page, "index", full_page=True)


def test_zero_pages_grid_and_inspector(page: Any, live_server: Any, screenshot: Any) -> None:
    view = open_session(page, live_server.url, f"preset={PRESET}&kernel=6.18")
    assert page.evaluate("() => typeof Plotly") == "object"
    step_until(page, view, "ksm_zero", 100)
    settle(page)
    assert counts(page, view)["ksm_zero"] == 100
    assert pixels(page, view, KSM_ZERO_RGB) > 100, "no KSM-placed zero page drawn on the canvas"
    screenshot(page, "session-zero-pages-merged")

    # click one of the zero pages (page 5 of A heap) and read its PTE in the inspector
    box = page.evaluate(
        """() => { const g = window.__ksm.views[0].grid; const lane = g.lane('A/heap');
                   const [x, y] = g._cellRect(lane, 5, g.scale);
                   const r = g.canvas.getBoundingClientRect();
                   return [r.left + x + g.scale / 2, r.top + y + g.scale / 2]; }"""
    )
    page.mouse.click(box[0], box[1])
    page.wait_for_selector(".inspector .inspect-page[data-kind='ksm_zero']", timeout=TIMEOUT)
    dirty = page.locator(".inspector li[data-bit='dirty']")
    assert "on" in (dirty.get_attribute("class") or "")
    assert page.locator(".inspector .inspect-page").get_attribute("data-dirty") == "true"
    assert "dirty" in page.inner_text(".inspector .why")
    screenshot(page, "inspector-ksm-zero-page")

    # the physical view: one cell per frame, with how many PTEs map it
    page.keyboard.press("v")
    page.wait_for_timeout(300)
    screenshot(page, "physical-view")
    page.keyboard.press("v")
    # presenter mode: large type, for the back of the room
    page.keyboard.press("p")
    page.wait_for_timeout(600)
    screenshot(page, "presenter-mode")
    page.keyboard.press("p")

    # the URL carries the step, so the link reopens here
    page.wait_for_function("() => new URL(location.href).searchParams.get('step') !== null")
    step = page.get_attribute(view, "data-step")
    link = page.evaluate("() => location.href")
    assert f"step={step}" in link and f"preset={PRESET}" in link and "kernel=6.18" in link
    share = page.get_attribute(".share-link", "href") or ""
    assert f"step={step}" in share and "sid=" not in share
    page.goto(link)
    page.wait_for_function(
        f"() => document.querySelector('.session-view').dataset.step === '{step}'",
        timeout=TIMEOUT,
    )
    wait_count(page, view, "ksm_zero", "===", 100)
    # the share link (no live session id) rebuilds the same step in a new session
    sid = page.get_attribute(view, "data-session")
    page.goto(live_server.url + share if share.startswith("/") else share)
    page.wait_for_function(
        f"() => {{ const v = document.querySelector('.session-view');"
        f" return v && v.dataset.session !== '{sid}' && v.dataset.step === '{step}'; }}",
        timeout=TIMEOUT,
    )
    wait_count(page, view, "ksm_zero", "===", 100)


def test_keyboard_and_charts_grow_while_playing(
    page: Any, live_server: Any, screenshot: Any
) -> None:
    view = open_session(page, live_server.url, f"preset={PRESET}&kernel=6.18")
    chart = ".session-view .chart-global"
    page.wait_for_selector(f"{chart}[data-points]")

    # ? opens the help overlay, Escape closes it
    page.keyboard.press("?")
    assert page.evaluate("() => document.getElementById('help').open")
    screenshot(page, "help-overlay")
    page.keyboard.press("Escape")
    assert not page.evaluate("() => document.getElementById('help').open")

    # space plays: steps advance and the charts grow; space again pauses
    page.locator(chart).scroll_into_view_if_needed()
    points0 = int(page.get_attribute(chart, "data-points") or 0)
    page.keyboard.press(" ")
    page.wait_for_function(
        f"() => Number(document.querySelector('{chart}').dataset.points) >= {points0 + 5}",
        timeout=TIMEOUT,
    )
    page.keyboard.press(" ")
    page.wait_for_function(
        "() => document.querySelector('.session-view').dataset.playing === 'false'",
        timeout=TIMEOUT,
    )
    page.wait_for_timeout(300)
    step = int(page.get_attribute(view, "data-step") or 0)
    assert step >= 5

    # left arrow steps back, PageDown (a clicker) steps forward
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(
        f"() => document.querySelector('{view}').dataset.step === '{step - 1}'", timeout=TIMEOUT
    )
    page.keyboard.press("PageDown")
    page.wait_for_function(
        f"() => document.querySelector('{view}').dataset.step === '{step}'", timeout=TIMEOUT
    )

    # + raises the speed; v switches to the physical view; p presenter mode
    speed = page.input_value("input.speed")
    page.keyboard.press("+")
    page.wait_for_function(
        f"() => document.querySelector('input.speed').value !== '{speed}'", timeout=TIMEOUT
    )
    page.keyboard.press("v")
    assert page.get_attribute(f"{view} canvas.page-grid", "data-view") == "physical"
    page.keyboard.press("v")
    assert page.get_attribute(f"{view} canvas.page-grid", "data-view") == "virtual"
    page.keyboard.press("p")
    assert page.evaluate("() => document.body.classList.contains('presenter')")
    assert "presenter=1" in page.evaluate("() => location.href")
    page.keyboard.press("f")
    assert page.evaluate("() => document.body.dataset.fullscreenRequested") == "1"


def test_side_by_side_unmergeable_6_5_vs_6_18(page: Any, live_server: Any, screenshot: Any) -> None:
    page.goto(f"{live_server.url}/compare?preset={PRESET}&left=6.5&right=6.18")
    left, right = ".session-view:nth-of-type(1)", ".session-view:nth-of-type(2)"
    page.wait_for_selector(f"{right}[data-kernel='6.18']")
    assert page.get_attribute(left, "data-kernel") == "6.5"
    for v in (left, right):
        page.wait_for_function(
            f"() => document.querySelector('{v} canvas.page-grid').dataset.kindCounts",
            timeout=TIMEOUT,
        )

    # a presentation clicker steps both kernels in lockstep until the zero pages merge
    step_until(page, right, "ksm_zero", 100, key="PageDown")
    wait_count(page, left, "zero", ">=", 100)
    settle(page)
    assert pixels(page, right, KSM_ZERO_RGB) > 100
    assert pixels(page, left, KSM_ZERO_RGB) == 0  # 6.5: a clean PTE, like a read fault
    assert pixels(page, left, ZERO_RGB) > 100
    screenshot(page, "compare-6.5-vs-6.18-merged")

    # one click inspects the same page on both kernels: dirty bit 0 on 6.5, 1 on 6.18
    xy = page.evaluate(
        """() => { const g = window.__ksm.views[1].grid; const lane = g.lane('A/heap');
                   const [x, y] = g._cellRect(lane, 5, g.scale);
                   const r = g.canvas.getBoundingClientRect();
                   return [r.left + x + g.scale / 2, r.top + y + g.scale / 2]; }"""
    )
    page.mouse.click(*xy)
    page.wait_for_selector(f"{right} .inspect-page[data-kind='ksm_zero']", timeout=TIMEOUT)
    page.wait_for_selector(f"{left} .inspect-page[data-kind='zero']", timeout=TIMEOUT)
    assert page.get_attribute(f"{right} .inspect-page", "data-dirty") == "true"
    assert page.get_attribute(f"{left} .inspect-page", "data-dirty") == "false"
    page.locator(f"{right} .inspector").scroll_into_view_if_needed()
    screenshot(page, "compare-inspector-dirty-bit")
    page.evaluate("() => window.scrollTo(0, 0)")

    # select the whole mapping on the grid (shift + drag), then MADV_UNMERGEABLE
    ends = page.evaluate(
        """() => { const v = window.__ksm.views.find(v => v.kernel === '6.18');
                   const g = v.grid; const lane = g.lane('A/heap');
                   const r = g.canvas.getBoundingClientRect(), h = g.scale / 2;
                   const at = (i) => { const [x, y] = g._cellRect(lane, i, g.scale);
                                       return [r.left + x + h, r.top + y + h]; };
                   return [at(0), at(lane.npages - 1)]; }"""
    )
    page.keyboard.down("Shift")
    page.mouse.move(*ends[0])
    page.mouse.down()
    page.mouse.move(*ends[1], steps=5)
    page.mouse.up()
    page.keyboard.up("Shift")
    assert page.input_value("form.inject-form [name=pages]") == "0-299"
    assert page.input_value("form.inject-form [name=proc]") == "A"
    page.click("form.inject-form button[value=MADV_UNMERGEABLE]")
    wait_count(page, right, "ksm_zero", "===", 0)
    wait_count(page, right, "zero", "===", 0)
    settle(page)
    assert counts(page, left)["zero"] == 100  # still on the zero page on 6.5
    assert pixels(page, right, KSM_ZERO_RGB) == 0
    assert pixels(page, right, ZERO_RGB) == 0
    assert pixels(page, left, ZERO_RGB) > 100
    # and the counters say it: ksm_zero_pages 0 on 6.18, no such counter on 6.5
    assert page.inner_text(f"{right} [data-counter='g.ksm_zero_pages']") == "0"
    assert page.inner_text(f"{left} [data-counter='g.ksm_zero_pages']") in ("—", "0")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_timeout(300)
    screenshot(page, "compare-6.5-vs-6.18-after-unmergeable")
    page.wait_for_timeout(600)  # the charts draw once the steps stop
    screenshot(page, "compare-full-page", full_page=True)

    # the link to this step carries the injected MADV_UNMERGEABLE (`do`) and rebuilds it
    page.wait_for_function(
        "() => new URL(document.querySelector('.share-link').href).searchParams.has('do')",
        timeout=TIMEOUT,
    )
    share = page.get_attribute(".share-link", "href") or ""
    page.goto(live_server.url + share if share.startswith("/") else share)
    page.wait_for_function("() => window.__ksm && window.__ksm.views.length === 2")
    wait_count(page, left, "zero", "===", 100)
    wait_count(page, right, "zero", "===", 0)
    wait_count(page, right, "ksm_zero", "===", 0)


def test_bad_knob_shows_inline_error(page: Any, live_server: Any, screenshot: Any) -> None:
    open_session(page, live_server.url, f"preset={PRESET}&kernel=6.18")
    page.fill("form.knobs-form [name='knob.pages_to_scan']", "-5")
    page.click("form.knobs-form button[type=submit]")
    page.wait_for_selector("form.knobs-form .error", timeout=TIMEOUT)
    assert "pages_to_scan" in page.inner_text("form.knobs-form")


def test_upload_scenario_and_inspect_a_process(page: Any, live_server: Any) -> None:
    page.goto(live_server.url + "/")
    bad = {"name": "bad.json", "mimeType": "application/json", "buffer": b'{"format": 1}'}
    page.set_input_files("#upload input[type=file]", bad)
    page.click("#upload button[type=submit]")
    page.wait_for_selector("#upload .error", timeout=TIMEOUT)  # inline, the page stays
    doc = {
        "format": "ksm-scenario/1",
        "name": "two-readers",
        "kernel": "6.18",
        "steps": [
            {"op": "spawn", "proc": "P"},
            {"op": "mmap", "proc": "P", "vma": "buf", "pages": 64},
            {"op": "read", "proc": "P", "vma": "buf", "pages": "0-31"},
        ],
    }
    good = {
        "name": "two-readers.json",
        "mimeType": "application/json",
        "buffer": json.dumps(doc).encode(),
    }
    page.set_input_files("#upload input[type=file]", good)
    page.click("#upload button[type=submit]")
    page.wait_for_selector(".session-view[data-session]", timeout=TIMEOUT)
    view = ".session-view"
    step_until(page, view, "zero", 32)
    assert counts(page, view)["ksm_zero"] == 0  # a read fault maps the zero page, clean PTE
    # click the process name in the grid's gutter: its ksm_stat
    xy = page.evaluate(
        """() => { const g = window.__ksm.views[0].grid; const lane = g.lane('P/buf');
                   const r = g.canvas.getBoundingClientRect();
                   return [r.left + 20, r.top + g.oy + lane.row0 * g.scale + 8]; }"""
    )
    page.mouse.click(*xy)
    page.wait_for_selector(".inspector .inspect-proc[data-proc='P']", timeout=TIMEOUT)
    assert "ksm_rmap_items" in page.inner_text(".inspector")


def test_deleted_session_says_so_and_its_link_rebuilds_it(page: Any, live_server: Any) -> None:
    import urllib.request

    view = open_session(page, live_server.url, f"preset={PRESET}&kernel=6.18&step=3")
    page.wait_for_function(
        f"() => document.querySelector('{view}').dataset.step === '3'", timeout=TIMEOUT
    )
    sid = page.get_attribute(view, "data-session")
    req = urllib.request.Request(f"{live_server.url}/api/sessions/{sid}", method="DELETE")
    urllib.request.urlopen(req, timeout=10).close()
    page.wait_for_selector(f"{view}[data-end='gone'] .conn-status a", timeout=TIMEOUT)
    page.click(f"{view} .conn-status a")
    page.wait_for_function(
        f"() => {{ const v = document.querySelector('{view}');"
        f" return v && v.dataset.session !== '{sid}' && v.dataset.step === '3'; }}",
        timeout=TIMEOUT,
    )
