"""What the audience sees is always true (issue 14), in a real Chromium.

Every counter cell's text is checked against the API's value, formatted by the rules of
``static/js/format.js`` (mirrored here with exact decimal rounding), and must not be clipped;
the legend's counts against the counters (or a note that explains the difference); the knobs
form against the kernel's knobs after inject, fork and seek; chart markers after back and
reload; presenter mode at 1280x720.
"""

from __future__ import annotations

import json
import time
from decimal import ROUND_HALF_UP, Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from bench.grid_fps import scenario as big_scenario
from tests.browser.conftest import api

TIMEOUT = 60_000
REPO = Path(__file__).resolve().parents[2]
VIEWPORTS = [(1280, 720), (1600, 1000)]


# ----------------------------------------------------------- format.js, mirrored


def _fixed(x: Decimal, digits: int) -> str:
    q = Decimal(1).scaleb(-digits)
    return str(x.quantize(q, rounding=ROUND_HALF_UP))


def fmt_bytes(n: int) -> str:
    x, i = Decimal(abs(n)), 0
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    while x >= 1024 and i < len(units) - 1:
        x /= 1024
        i += 1
    if i == 0:
        return f"{n} B"
    return ("-" if n < 0 else "") + _fixed(x, 0 if x >= 100 else 1) + f" {units[i]}"


def fmt_value(v: Any, unit: str) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return v
    if unit == "bytes":
        return fmt_bytes(v)
    if abs(v) >= 10_000_000:
        return _fixed(Decimal(v / 1e6), 1) + " M"
    return f"{v:,}"


def test_format_rules() -> None:
    assert fmt_bytes(2_936_012) == "2.8 MiB"
    assert fmt_bytes(-1_441_792) == "-1.4 MiB"
    assert fmt_bytes(1023) == "1023 B"
    assert fmt_bytes(1 << 30) == "1.0 GiB"
    assert fmt_value(65_280, "pages") == "65,280"
    assert fmt_value(16_777_216, "pages") == "16.8 M"


# ----------------------------------------------------------------------- helpers


@pytest.fixture
def sized(browser: Any, live_server: Any, request: Any) -> Any:
    """A page at a given viewport, offline, collecting page errors."""
    from tests.browser.conftest import Offline

    contexts: list[Any] = []

    def make(w: int, h: int) -> Any:
        ctx = browser.new_context(viewport={"width": w, "height": h}, device_scale_factor=1)
        off = Offline(live_server.url)
        ctx.route("**/*", off.route)
        pg = ctx.new_page()
        pg.js_errors = []
        pg.on("pageerror", lambda exc: pg.js_errors.append(str(exc)))
        contexts.append((ctx, off, pg))
        return pg

    yield make
    for ctx, off, pg in contexts:
        ctx.close()
        assert off.outside == [], f"requests left localhost: {off.outside}"
        assert pg.js_errors == [], f"JavaScript errors: {pg.js_errors}"


def open_sid(pg: Any, server: Any, sid: str, extra: str = "") -> None:
    pg.goto(f"{server.url}/session?sid={sid}{extra}")
    pg.wait_for_function(
        "() => document.querySelector('.session-view canvas.page-grid').dataset.kindCounts"
        " && document.querySelector('td[data-counter]')",
        timeout=TIMEOUT,
    )


def wait_step(pg: Any, step: int) -> None:
    pg.wait_for_function(
        f"() => document.querySelector('.session-view').dataset.step === '{step}'",
        timeout=TIMEOUT,
    )
    pg.wait_for_timeout(300)


CELLS_JS = """() => [...document.querySelectorAll('td[data-counter]')].map(td => ({
  key: td.dataset.counter, text: td.textContent, value: td.dataset.value,
  clipped: td.scrollWidth > td.clientWidth + 1,
  visible: td.getBoundingClientRect().width > 0}))"""


def check_counters(pg: Any, server: Any, sid: str) -> int:
    """Every counter cell equals the API's value, formatted, whole; returns the cells seen."""
    snap = api(server, f"/sessions/{sid}/snapshot")
    units = {(f["place"], f["name"]): f["unit"] for f in snap["ksm_files"]}
    want: dict[str, tuple[Any, str]] = {}
    for k, v in snap["global"].items():
        want[f"g.{k}"] = (v, units[("sysfs", k)])
    for p in snap["procs"]:
        for k, v in p["ksm_stat"].items():
            want[f"{p['name']}.{k}"] = (v, units[("ksm_stat", k)])
    cells = pg.evaluate(CELLS_JS)
    assert {c["key"] for c in cells} == set(want)
    for c in cells:
        v, unit = want[c["key"]]
        assert c["text"] == fmt_value(v, unit), (c, v)
        assert c["value"] == (
            "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
        )
        if c["visible"]:
            assert not c["clipped"], c
    return len(cells)


def legend_counts(pg: Any) -> dict[str, int]:
    raw = pg.evaluate(
        "() => Object.fromEntries([...document.querySelectorAll('ul.legend li[data-kind]')]"
        ".map(li => [li.dataset.kind, li.querySelector('b.count')?.dataset.counts]))"
    )
    return {k: json.loads(v)[0] for k, v in raw.items() if v}


def legend_notes(pg: Any) -> dict[str, str]:
    out: dict[str, str] = pg.evaluate(
        "() => Object.fromEntries([...document.querySelectorAll('ul.legend .note')]"
        ".map(n => [n.dataset.kind, n.textContent]))"
    )
    return out


# ------------------------------------------------------------------------- tests


@pytest.mark.parametrize("size", VIEWPORTS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_counters_and_legend_zero_pages_unmerge(
    sized: Any, live_server: Any, size: tuple[int, int], screenshot: Any
) -> None:
    sid = api(live_server, "/sessions", {"preset": "zero-pages-unmerge", "kernel": "6.18"})["id"]
    pg = sized(*size)
    open_sid(pg, live_server, sid)
    api(live_server, f"/sessions/{sid}/step", {"n": 16})
    wait_step(pg, 16)
    assert check_counters(pg, live_server, sid) > 10
    g = api(live_server, f"/sessions/{sid}/snapshot")["global"]
    counts, notes = legend_counts(pg), legend_notes(pg)
    assert counts["ksm_zero"] == g["ksm_zero_pages"] == 100
    assert counts["unstable"] == g["pages_unshared"]
    # pages_volatile 100, no orange cell: the zero-merged pages' items, said in the legend
    assert g["pages_volatile"] == 100 and counts["volatile"] == 0
    assert "pages_volatile 100 = 0 volatile cells + 100" in notes["volatile"]
    pg.click("canvas.page-grid", position={"x": 200, "y": 20})  # any cell: the inspector works
    api(live_server, f"/sessions/{sid}/step", {"n": 6})
    wait_step(pg, 22)
    check_counters(pg, live_server, sid)
    g = api(live_server, f"/sessions/{sid}/snapshot")["global"]
    counts, notes = legend_counts(pg), legend_notes(pg)
    # after MADV_UNMERGEABLE: no orange cell, the unmerged pages are "stale" (still counted)
    assert counts["volatile"] == g["pages_volatile"] == 0
    assert counts["stale"] == g["pages_shared"] + g["pages_sharing"] == 100
    assert "100 unmerged cells" in notes["stale"]
    d = api(live_server, f"/sessions/{sid}/pages/A/heap/150")
    assert d["kind"] == "stale" and "stable node" in d["why"]
    if size == (1280, 720):
        screenshot(pg, "legend-counts-1280")


@pytest.mark.parametrize("size", VIEWPORTS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_counters_whole_at_262144_pages(
    sized: Any, live_server: Any, size: tuple[int, int], screenshot: Any
) -> None:
    sid = api(live_server, "/sessions", {"scenario": big_scenario()})["id"]
    ops = len(big_scenario()["steps"])
    api(live_server, f"/sessions/{sid}/step", {"n": ops})
    api(live_server, f"/sessions/{sid}/step", {"n": 2, "grain": "pass"})
    head = api(live_server, f"/sessions/{sid}")["step"]
    pg = sized(*size)
    open_sid(pg, live_server, sid)
    wait_step(pg, head)
    g = api(live_server, f"/sessions/{sid}/snapshot")["global"]
    assert g["pages_sharing"] > 60_000 and g["general_profit"] > 100 << 20
    assert check_counters(pg, live_server, sid) == 11 + 4 * 6
    if size == (1280, 720):
        screenshot(pg, "counters-262144-1280")


def knob_fields(pg: Any) -> dict[str, str]:
    out: dict[str, str] = pg.evaluate(
        "() => Object.fromEntries([...document.querySelectorAll('#knobs input[data-knob]')]"
        ".map(i => [i.dataset.knob, i.value]))"
    )
    return out


def wait_knob(pg: Any, name: str, value: Any) -> None:
    pg.wait_for_function(
        f"() => document.querySelector('#knobs input[data-knob=\"{name}\"]').value === '{value}'",
        timeout=TIMEOUT,
    )


def same_knobs(pg: Any, knobs: dict[str, Any]) -> None:
    assert knob_fields(pg) == {k: str(v) for k, v in knobs.items()}


def test_knob_form_follows_the_kernel(sized: Any, live_server: Any) -> None:
    sid = api(live_server, "/sessions", {"preset": "zero-pages-unmerge", "kernel": "6.18"})["id"]
    pg = sized(1280, 720)
    open_sid(pg, live_server, sid)
    same_knobs(pg, api(live_server, f"/sessions/{sid}/snapshot")["knobs"])
    api(live_server, f"/sessions/{sid}/step", {"n": 3})
    wait_step(pg, 3)
    # an injected run=1 shows in the form at once
    api(live_server, f"/sessions/{sid}/inject", {"op": {"op": "sysfs", "knob": "run", "value": 1}})
    wait_knob(pg, "run", 1)
    same_knobs(pg, api(live_server, f"/sessions/{sid}/snapshot")["knobs"])
    before = api(live_server, f"/sessions/{sid}/snapshot")["knobs"]
    # one field changed: one knob written
    pg.fill('#knobs input[data-knob="sleep_millisecs"]', "123")
    pg.click("#knobs button[type=submit]")
    pg.wait_for_selector("#knobs .ok", timeout=TIMEOUT)
    assert pg.text_content("#knobs .ok") == "wrote sleep_millisecs=123"
    after = api(live_server, f"/sessions/{sid}/snapshot")["knobs"]
    assert after == {**before, "sleep_millisecs": 123}
    same_knobs(pg, after)
    # seek back before the writes: the form shows the kernel's knobs there
    api(live_server, f"/sessions/{sid}/seek", {"step": 2})
    wait_knob(pg, "run", 0)
    same_knobs(pg, api(live_server, f"/sessions/{sid}/snapshot")["knobs"])
    # a fork shows the fork's knobs
    api(live_server, f"/sessions/{sid}/seek", {"step": 5})
    fork = api(live_server, f"/sessions/{sid}/fork", {})
    fid = fork["id"]
    open_sid(pg, live_server, fid)
    same_knobs(pg, api(live_server, f"/sessions/{fid}/snapshot")["knobs"])


def markers(pg: Any) -> list[int]:
    out: list[int] = pg.evaluate("() => window.__ksm.views[0].charts.markers.map(m => m.step)")
    return sorted(out)


def test_chart_markers_survive_back_and_reload(sized: Any, live_server: Any) -> None:
    sid = api(live_server, "/sessions", {"preset": "zero-pages-unmerge", "kernel": "6.18"})["id"]
    pg = sized(1600, 1000)
    open_sid(pg, live_server, sid)
    api(live_server, f"/sessions/{sid}/step", {"n": 24})
    wait_step(pg, 24)
    pg.wait_for_function("() => window.__ksm.views[0].charts.markers.some(m => m.step === 22)")
    for _ in range(3):  # fast presses: no "buffered is not iterable"
        pg.keyboard.press("ArrowLeft")
    wait_step(pg, 21)
    pg.keyboard.press("ArrowRight")
    wait_step(pg, 22)
    pg.wait_for_function(
        "() => window.__ksm.views[0].charts.markers.some(m => m.step === 22)", timeout=TIMEOUT
    )
    assert 22 in markers(pg)
    pg.reload()
    open_sid(pg, live_server, sid)
    pg.wait_for_function(
        "() => window.__ksm.views[0].charts.markers.some(m => m.step === 22)", timeout=TIMEOUT
    )


def test_presenter_1280_has_grid_counters_inspector_on_screen(
    sized: Any, live_server: Any, screenshot: Any
) -> None:
    sid = api(live_server, "/sessions", {"preset": "zero-pages-unmerge", "kernel": "6.18"})["id"]
    api(live_server, f"/sessions/{sid}/step", {"n": 16})
    pg = sized(1280, 720)
    open_sid(pg, live_server, sid, "&presenter=1")
    pg.wait_for_timeout(800)
    pg.click("canvas.page-grid", position={"x": 260, "y": 30})
    pg.wait_for_selector(".inspector .inspect-page", timeout=TIMEOUT)
    for sel in ["canvas.page-grid", ".counters td[data-counter='g.ksm_zero_pages']", ".inspector"]:
        box = pg.locator(sel).first.bounding_box()
        assert box is not None, sel
        assert box["y"] >= 0 and box["y"] + min(box["height"], 80) <= 720, (sel, box)
        assert box["x"] >= 0 and box["x"] + box["width"] <= 1280, (sel, box)
    screenshot(pg, "presenter-1280")


# ------------------------------------------------------------------ side by side lockstep

PANES = (".session-view:nth-of-type(1)", ".session-view:nth-of-type(2)")
PANES_JS = "[...document.querySelectorAll('.side-by-side .session-view')]"


def pane_steps(pg: Any) -> list[int]:
    return [int(x) for x in pg.evaluate(f"() => {PANES_JS}.map(v => v.dataset.step)")]


def press_and_settle(pg: Any, server: Any, sids: list[str], key: str) -> list[int] | None:
    """Press ``key``; when a pane moves, wait until both panes show the server's steps
    (None when neither moves: the end, or the start)."""
    before = pane_steps(pg)
    pg.keyboard.press(key)
    try:
        pg.wait_for_function(
            f"b => {PANES_JS}.some((v, i) => v.dataset.step !== String(b[i]))",
            arg=before,
            timeout=3000,
        )
    except Exception:
        return None
    # The server answers with a group's state before a command while the command still
    # computes off the event loop (its panes may already show the first member's move), so
    # the steps are the server's once the screen shows them and the server still says so.
    deadline = time.monotonic() + TIMEOUT / 1000
    while True:
        want = [api(server, f"/sessions/{sid}")["step"] for sid in sids]
        try:
            pg.wait_for_function(
                f"w => {PANES_JS}.every((v, i) => v.dataset.step === String(w[i])"
                " && v.querySelector('.what-happened').dataset.step === String(w[i]))",
                arg=want,
                timeout=2000,
            )
        except Exception:
            if time.monotonic() > deadline:
                raise
            continue
        if [api(server, f"/sessions/{sid}")["step"] for sid in sids] == want:
            return want


def checkpoints_on_screen(pg: Any) -> list[str]:
    """The sentence of each pane when either one shows a checkpoint, else []."""
    texts = [pg.inner_text(f"{v} .what-happened") for v in PANES]
    return texts if any(t.startswith("checkpoint") for t in texts) else []


def test_side_by_side_vm_host_6_1_vs_6_18_meets_every_checkpoint_together(
    sized: Any, live_server: Any
) -> None:
    pg = sized(1600, 1000)
    pg.goto(f"{live_server.url}/compare?preset=vm-host&left=6.1&right=6.18")
    for v in PANES:
        pg.wait_for_function(
            f"() => document.querySelector('{v} canvas.page-grid').dataset.kindCounts",
            timeout=TIMEOUT,
        )
    sids = [pg.get_attribute(v, "data-session") or "" for v in PANES]
    assert [pg.get_attribute(v, "data-kernel") for v in PANES] == ["6.1", "6.18"]
    pg.click(f"{PANES[0]} .what-happened")  # focus the page, not a form field

    forward: list[tuple[list[int], str]] = []
    while (steps := press_and_settle(pg, live_server, sids, "PageDown")) is not None:
        texts = checkpoints_on_screen(pg)
        if texts:
            assert texts[0] == texts[1], (steps, texts)  # the same checkpoint, together
            forward.append((steps, texts[0]))
        assert len(forward) < 50
    names = [t for _, t in forward]
    doc = json.loads((REPO / "sim" / "presets" / "vm-host.json").read_text())
    expected = [f"checkpoint {s['name']!r}" for s in doc["steps"] if s["op"] == "checkpoint"]
    assert names == expected
    # the kernels do not need the same number of batches: the panes show their own steps
    assert any(a != b for a, b in (s for s, _ in forward))
    end = pane_steps(pg)
    assert all(api(live_server, f"/sessions/{sid}")["at_end"] for sid in sids)

    back: list[tuple[list[int], str]] = []
    while (steps := press_and_settle(pg, live_server, sids, "ArrowLeft")) is not None:
        texts = checkpoints_on_screen(pg)
        if texts:
            assert texts[0] == texts[1], (steps, texts)
            back.append((steps, texts[0]))
    assert pane_steps(pg) == [0, 0]
    assert back == forward[-2::-1]  # the same places, on the way back
    # a seek of the left pane's timeline to a checkpoint puts the right pane there too
    at, name = forward[len(forward) // 2]
    api(live_server, f"/sessions/{sids[0]}/seek", {"step": at[0]})
    pg.wait_for_function(
        f"w => {PANES_JS}.every((v, i) => v.dataset.step === String(w[i]))", arg=at, timeout=TIMEOUT
    )
    assert checkpoints_on_screen(pg) == [name, name]
    assert end[0] >= at[0]


def test_side_by_side_charts_share_axes_and_overlay(
    sized: Any, live_server: Any, screenshot: Any
) -> None:
    group = api(live_server, "/compare", {"preset": "vm-host", "kernels": ["6.1", "6.18"]})
    sids = [s["id"] for s in group["sessions"]]
    api(live_server, f"/sessions/{sids[0]}/step", {"n": 60})
    pg = sized(1600, 1000)
    pg.goto(f"{live_server.url}/compare?a={sids[0]}&b={sids[1]}")
    pg.wait_for_function(
        "() => [...document.querySelectorAll('.side-by-side .chart-global')]"
        ".every(el => el.dataset.yrange && +el.dataset.points > 50)"
        " && +document.querySelector('.chart-overlay').dataset.points > 100",
        timeout=TIMEOUT,
    )
    ranges = pg.evaluate(
        """() => [...document.querySelectorAll('.side-by-side .session-view')].map(v => {
             const g = v.querySelector('.chart-global')._fullLayout;
             const p = v.querySelector('.chart-procs')._fullLayout;
             return [g.yaxis.range, g.yaxis2 ? g.yaxis2.range : null, p.yaxis.range]; })"""
    )
    assert ranges[0] == ranges[1], ranges  # 384 KiB and 784 KiB no longer look alike
    top = ranges[0][0][1]
    highest = max(
        max(
            v
            for v in pg.evaluate(
                f"() => document.querySelectorAll('.side-by-side .chart-global')[{i}].data"
                ".flatMap(t => t.yaxis === 'y2' ? [] : t.y).filter(v => v !== null)"
            )
        )
        for i in (0, 1)
    )
    assert highest <= top < highest * 1.5
    names = pg.evaluate("() => document.querySelector('.chart-overlay').data.map(t => t.name)")
    assert "ksm_zero_pages 6.18" in names and "pages_sharing 6.1" in names
    # the overlay's points are the panes' own: a back drops the same steps from both
    pg.locator(".chart-overlay").scroll_into_view_if_needed()
    screenshot(pg, "compare-overlay")


# ------------------------------------------------------------------------- chapters


def press_to(pg: Any, server: Any, sid: str, key: str) -> int:
    """Press ``key`` and wait until the page shows the server's new step."""
    before = pg.get_attribute(".session-view", "data-step")
    pg.keyboard.press(key)
    pg.wait_for_function(
        "b => document.querySelector('.session-view').dataset.step !== b",
        arg=before,
        timeout=TIMEOUT,
    )
    # `]` may step through ksmd's batches to the next chapter: wait until it stops
    pg.wait_for_function("() => !window.__ksm.chapters.running", timeout=TIMEOUT)
    pg.wait_for_timeout(100)
    step = int(api(server, f"/sessions/{sid}")["step"])
    wait_step(pg, step)
    return step


def test_chapters_on_the_timeline(sized: Any, live_server: Any, screenshot: Any) -> None:
    sid = api(live_server, "/sessions", {"preset": "vm-host", "kernel": "6.18"})["id"]
    pg = sized(1280, 720)
    open_sid(pg, live_server, sid)
    pg.click(".what-happened")
    chapters = {s["at"] for s in api(live_server, f"/sessions/{sid}/snapshot")["chapters"]}
    assert chapters and pg.inner_text(".chapters-ahead") == f"{len(chapters)} ahead in the scenario"

    # ] steps on to the next checkpoint or op (ksmd's batches in between are run through)
    reached = []
    while "checkpoint 'merged'" not in pg.inner_text(".what-happened"):
        reached.append(press_to(pg, live_server, sid, "]"))
        assert len(reached) < 60
    marks = api(live_server, f"/sessions/{sid}/snapshot")["marks"]
    chapter_steps = [m["step"] for m in marks if m["what"]["kind"] in ("op", "checkpoint")]
    assert reached == chapter_steps
    assert any(b - a > 1 for a, b in pairwise(reached))  # a scan's batches skipped
    pg.wait_for_function(
        f"() => document.querySelector('.chapter-bar').dataset.marks === '{len(reached)}'"
    )
    screenshot(pg, "chapters-1280")

    # [ goes back chapter by chapter, ] forward again over the recorded ones
    assert press_to(pg, live_server, sid, "[") == reached[-2]
    assert press_to(pg, live_server, sid, "[") == reached[-3]
    assert press_to(pg, live_server, sid, "]") == reached[-2]
    # a click on a mark seeks there
    pg.click(f".chapter[data-step='{reached[3]}']")
    pg.wait_for_function(
        f"() => document.querySelector('.session-view').dataset.step === '{reached[3]}'",
        timeout=TIMEOUT,
    )
    assert api(live_server, f"/sessions/{sid}")["step"] == reached[3]
    # the help overlay documents the keys
    pg.keyboard.press("?")
    assert "next / previous chapter" in pg.inner_text("#help")


# --------------------------------------------------------------------------- phones

OVERFLOW_JS = """() => { const W = document.documentElement.clientWidth; const out = [];
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('svg') && el.getBoundingClientRect().right < 0) continue; // plotly's probe
    const r = el.getBoundingClientRect();
    if (r.width && (r.right > W + 1 || r.left < -1)) out.push(`${el.tagName}.${el.className}`);
  }
  return {W, scroll: document.documentElement.scrollWidth, out}; }"""


def test_phone_390_nothing_overflows_and_the_grid_is_on_the_first_screen(
    sized: Any, live_server: Any, screenshot: Any
) -> None:
    sid = api(live_server, "/sessions", {"preset": "zero-pages-unmerge", "kernel": "6.18"})["id"]
    api(live_server, f"/sessions/{sid}/step", {"n": 16})
    pg = sized(390, 844)
    pg.goto(f"{live_server.url}/")
    pg.wait_for_selector(".preset-list")
    res = pg.evaluate(OVERFLOW_JS)
    assert res["scroll"] <= res["W"] and res["out"] == [], ("index", res)
    for name, url in [
        ("session", f"/session?sid={sid}"),
        ("compare", "/compare?preset=vm-host&left=6.1&right=6.18"),
    ]:
        pg.goto(f"{live_server.url}{url}")
        pg.wait_for_function(
            "() => document.querySelector('canvas.page-grid').dataset.kindCounts", timeout=TIMEOUT
        )
        pg.wait_for_timeout(800)
        res = pg.evaluate(OVERFLOW_JS)
        assert res["scroll"] <= res["W"] and res["out"] == [], (name, res)
        top = pg.locator("canvas.page-grid").first.bounding_box()
        assert top is not None and top["y"] + 120 <= 844, (name, top)  # the grid is seen
        if name == "session":
            screenshot(pg, "phone-390")


# ---------------------------------------------------------------------------- upload


def test_knob_warnings_name_the_closest_knob() -> None:
    from app.server.pages.forms import knob_warnings

    doc = {
        "sysfs": {"use_zero_page": 1, "run": 1},
        "steps": [{"op": "sysfs", "knob": "pages_to_scann", "value": 10}, {"op": "scan"}],
    }
    warnings = knob_warnings(doc)
    assert [(w["field"], w["knob"]) for w in warnings] == [
        ("sysfs.use_zero_page", "use_zero_page"),
        ("steps[0].knob", "pages_to_scann"),
    ]
    assert warnings[0]["message"] == "unknown knob 'use_zero_page': did you mean use_zero_pages?"
    assert "did you mean pages_to_scan?" in warnings[1]["message"]
    assert knob_warnings({"sysfs": {"run": 1}}) == []


def test_upload_warns_about_an_unknown_knob(
    sized: Any, live_server: Any, tmp_path: Path, screenshot: Any
) -> None:
    doc = json.loads((REPO / "sim" / "presets" / "zero-pages-unmerge.json").read_text())
    doc["sysfs"] = {"use_zero_page": 1}
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(doc))
    pg = sized(1280, 720)
    pg.goto(f"{live_server.url}/")
    pg.set_input_files("#upload input[type=file]", str(path))
    pg.click("#upload button[type=submit]")
    pg.wait_for_selector("#upload .upload-warnings", timeout=TIMEOUT)
    text = pg.inner_text("#upload .upload-warnings")
    assert "sysfs.use_zero_page" in text and "did you mean use_zero_pages?" in text
    assert "sid=" not in pg.url  # still on the start page
    pg.locator("#upload").scroll_into_view_if_needed()
    screenshot(pg, "upload-warning")
    # the file stays chosen: a second press opens it as it is
    pg.click("#upload .upload-warnings button[type=submit]")
    pg.wait_for_url("**/session?sid=*", timeout=TIMEOUT)
    pg.wait_for_selector(".session-view", timeout=TIMEOUT)


# ------------------------------------------------------------------------- inspector


@pytest.mark.parametrize("kernel", ["6.5", "6.1"])
def test_inspector_says_madv_unmergeable_left_a_zero_page_behind(
    sized: Any, live_server: Any, screenshot: Any, kernel: str
) -> None:
    sid = api(live_server, "/sessions", {"preset": "zero-pages-unmerge", "kernel": kernel})["id"]
    while "MADV_UNMERGEABLE" not in api(live_server, f"/sessions/{sid}/step", {"n": 1})["summary"]:
        assert api(live_server, f"/sessions/{sid}")["step"] < 60
    detail = api(live_server, f"/sessions/{sid}/pages/A/heap/5")
    assert detail["kind"] == "zero" and "Left behind by MADV_UNMERGEABLE" in detail["why"]
    pg = sized(1280, 720)
    open_sid(pg, live_server, sid)
    xy = pg.evaluate(
        """() => { const g = window.__ksm.views[0].grid; const lane = g.lane('A/heap');
                   const [x, y] = g._cellRect(lane, 5, g.scale);
                   const r = g.canvas.getBoundingClientRect();
                   return [r.left + x + g.scale / 2, r.top + y + g.scale / 2]; }"""
    )
    pg.mouse.click(*xy)
    pg.wait_for_selector(".inspect-page[data-kind='zero']", timeout=TIMEOUT)
    why = pg.inner_text(".inspect-page .why")
    assert why == detail["why"]
    assert "6.6 series" in why
    if kernel == "6.5":
        pg.locator(".inspector").scroll_into_view_if_needed()
        screenshot(pg, "inspector-left-behind-6.5")


def test_live_view_linked_both_ways(sized: Any, live_server: Any) -> None:
    pg = sized(1280, 720)
    pg.goto(f"{live_server.url}/")
    pg.click("a.live-link")
    pg.wait_for_url("**/live", timeout=TIMEOUT)
    # the dashboard's theme: its stylesheet and dark background
    assert pg.evaluate("() => getComputedStyle(document.body).backgroundColor") == "rgb(11, 14, 19)"
    pg.click("a.dashboard-link")
    pg.wait_for_selector(".preset-list", timeout=TIMEOUT)
    sid = api(live_server, "/sessions", {"preset": "zero-pages-unmerge", "kernel": "6.18"})["id"]
    open_sid(pg, live_server, sid)
    assert pg.get_attribute("a.live-link", "href") == "/live"


# ------------------------------------------------------------------ time and money (14)


def fmt_duration(ns: int) -> str:
    """static/js/format.js duration(), mirrored."""
    if ns < 1e6:
        return f"{round(ns / 1e3)} µs"
    if ns < 1e9:
        return _fixed(Decimal(ns / 1e6), 1) + " ms"
    if ns < 60e9:
        return _fixed(Decimal(ns / 1e9), 2) + " s"
    m = int(ns // 60e9)
    return f"{m} min " + _fixed(Decimal((ns - m * 60e9) / 1e9), 1) + " s"


def fmt_share(cpu: int, now: int) -> str:
    return _fixed(Decimal(100 * cpu / now), 2) + " %" if now else ""


MONEY_JS = """() => [...document.querySelectorAll('.session-view')].map(v => ({
  cpu: v.querySelector('.m-cpu').textContent, cpuNs: v.querySelector('.m-cpu').dataset.ns,
  time: v.querySelector('.m-time').textContent, timeNs: v.querySelector('.m-time').dataset.ns,
  saved: v.querySelector('.m-saved').textContent,
  savedBytes: v.querySelector('.m-saved').dataset.bytes}))"""


def check_money(pg: Any, server: Any, sid: str, pane: int = 0) -> dict[str, int]:
    """The time-and-money figures on screen equal the step's ``story``, formatted."""
    story: dict[str, int] = api(server, f"/sessions/{sid}/snapshot")["story"]
    shown = pg.evaluate(MONEY_JS)[pane]
    share = fmt_share(story["cpu_ns"], story["time_ns"])
    assert shown["cpu"] == fmt_duration(story["cpu_ns"]) + (f" ({share})" if share else "")
    assert shown["time"] == fmt_duration(story["time_ns"])
    assert shown["saved"] == fmt_bytes(story["saved_bytes"])
    assert (int(shown["cpuNs"]), int(shown["timeNs"]), int(shown["savedBytes"])) == (
        story["cpu_ns"],
        story["time_ns"],
        story["saved_bytes"],
    )
    return story


@pytest.mark.parametrize("size", VIEWPORTS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_time_and_money_equal_the_sweep_at_the_end_of_the_story(
    sized: Any, live_server: Any, size: tuple[int, int]
) -> None:
    from app.whatif.sweep import SweepPoint, run_point

    knobs = {"pages_to_scan": 50, "sleep_millisecs": 30}
    sid = api(
        live_server,
        "/sessions",
        {"preset": "zero-pages-unmerge", "kernel": "6.18", "knobs": knobs},
    )["id"]
    # the sweep stops this story at its sweep_until checkpoint, "pass3"
    while not api(live_server, f"/sessions/{sid}/step", {"n": 1})["summary"].startswith(
        "checkpoint 'pass3'"
    ):
        assert api(live_server, f"/sessions/{sid}")["step"] < 80
    step = api(live_server, f"/sessions/{sid}")["step"]
    pg = sized(*size)
    open_sid(pg, live_server, sid)
    wait_step(pg, step)
    story = check_money(pg, live_server, sid)
    r = run_point(SweepPoint("zero-pages-unmerge", "6.18", tuple(knobs.items())), max_passes=0)
    assert (story["time_ns"], story["cpu_ns"], story["batches"], story["saved_bytes"]) == (
        r.total_ns,
        r.cpu_ns,
        r.batches,
        r.general_profit,
    )
    assert (
        story["saved_bytes"]
        == api(live_server, f"/sessions/{sid}/snapshot")["global"]["general_profit"]
    )
    # back: the figures of the earlier step, exactly
    pg.keyboard.press("ArrowLeft")
    wait_step(pg, step - 1)
    check_money(pg, live_server, sid)


def test_money_on_a_262144_page_session(sized: Any, live_server: Any) -> None:
    sid = api(live_server, "/sessions", {"scenario": big_scenario()})["id"]
    api(live_server, f"/sessions/{sid}/step", {"n": len(big_scenario()["steps"])})
    api(live_server, f"/sessions/{sid}/step", {"n": 2, "grain": "pass"})
    head = api(live_server, f"/sessions/{sid}")["step"]
    pg = sized(1280, 720)
    open_sid(pg, live_server, sid)
    wait_step(pg, head)
    story = check_money(pg, live_server, sid)
    g = api(live_server, f"/sessions/{sid}/snapshot")["global"]
    assert story["cpu_ns"] > 0 and story["saved_bytes"] == g["general_profit"] > 100 << 20


def chart_state(pg: Any) -> dict[str, Any]:
    out: dict[str, Any] = pg.evaluate(
        """() => { const c = window.__ksm.views[0].charts;
             return {mode: c.globalEl.dataset.xmode || 'step', x: c.globalEl.data[0].x,
                     markers: c.markers.map(m => m.step),
                     shapes: (c.globalEl.layout.shapes || []).map(s => s.x0)}; }"""
    )
    return out


def test_x_axis_in_simulated_time_remembered_with_markers(
    sized: Any, live_server: Any, screenshot: Any
) -> None:
    sid = api(live_server, "/sessions", {"preset": "zero-pages-unmerge", "kernel": "6.18"})["id"]
    api(live_server, f"/sessions/{sid}/step", {"n": 24})
    pg = sized(1600, 1000)
    open_sid(pg, live_server, sid)
    wait_step(pg, 24)
    pg.wait_for_function("() => window.__ksm.views[0].charts.markers.some(m => m.step === 22)")
    pg.click(".what-happened")
    pg.keyboard.press("t")
    times = api(live_server, f"/sessions/{sid}/times")["time_ns"]
    want = [ns / 1e9 for ns in times]
    pg.wait_for_function(
        "n => window.__ksm.views[0].charts.globalEl.data[0].x.length === n"
        " && window.__ksm.views[0].charts.globalEl.dataset.xmode === 'time'",
        arg=len(want),
        timeout=TIMEOUT,
    )
    st = chart_state(pg)
    assert st["x"] == pytest.approx(want) and 22 in st["markers"]
    assert times[22] / 1e9 in st["shapes"]  # the marker at its simulated time
    assert pg.inner_text(".x-axis-toggle") == "x: simulated time"
    pg.locator(".charts").scroll_into_view_if_needed()
    screenshot(pg, "charts-simulated-time")
    # remembered across a reload; markers too
    pg.reload()
    open_sid(pg, live_server, sid)
    pg.wait_for_function(
        "() => window.__ksm.views[0].charts.globalEl.dataset.xmode === 'time'"
        " && window.__ksm.views[0].charts.markers.some(m => m.step === 22)"
        " && window.__ksm.views[0].charts.globalEl.data[0].x.length > 20",
        timeout=TIMEOUT,
    )
    assert chart_state(pg)["x"] == pytest.approx(want)
    # back in steps with a click
    pg.click(".x-axis-toggle")
    pg.wait_for_function(
        "() => window.__ksm.views[0].charts.globalEl.dataset.xmode === 'step'"
        " && window.__ksm.views[0].charts.globalEl.data[0].x.length === 25",
        timeout=TIMEOUT,
    )
    assert chart_state(pg)["x"] == list(range(25))


# ------------------------------------------------------------ words, story, sharers (14)


def test_plain_words_call_chain_and_the_story_in_the_page(
    sized: Any, live_server: Any, screenshot: Any
) -> None:
    sid = api(live_server, "/sessions", {"preset": "zero-pages-unmerge", "kernel": "6.18"})["id"]
    api(live_server, f"/sessions/{sid}/step", {"n": 13})  # the zero-page merge
    pg = sized(1280, 720)
    open_sid(pg, live_server, sid)
    wait_step(pg, 13)
    what = api(live_server, f"/sessions/{sid}/snapshot")["what"]
    assert pg.inner_text(".what-happened .words") == what["words"]
    assert what["words"].startswith("ksmd merged A heap[0-99] into the zero page")
    assert pg.inner_text(".what-happened .call-chain") == what["chain"]
    assert "try_to_merge_with_zero_page" in what["chain"]
    # the call chain is the smaller, secondary line
    sizes = pg.evaluate(
        "() => ['.words', '.call-chain'].map(s => parseFloat(getComputedStyle("
        "document.querySelector('.what-happened ' + s)).fontSize))"
    )
    assert sizes[1] < sizes[0]
    # the story's paragraph, readable in the page (not only a tooltip), and collapsible
    from sim.presets import load_preset

    desc = load_preset("zero-pages-unmerge").description
    assert pg.inner_text(".story-text p") == desc
    assert pg.locator(".story-text p").is_visible()
    pg.click(".story-text summary")
    assert not pg.locator(".story-text p").is_visible()
    screenshot(pg, "session-plain-words")
    # presenter mode: the paragraph on one line
    open_sid(pg, live_server, sid, "&presenter=1")
    box = pg.locator(".story-text p").bounding_box()
    lh = pg.evaluate(
        "() => parseFloat(getComputedStyle(document.querySelector('.story-text p')).lineHeight)"
        " || 20"
    )
    assert box is not None and box["height"] < 1.6 * lh


def test_inspector_groups_sharers_as_ranges(sized: Any, live_server: Any, screenshot: Any) -> None:
    sid = api(live_server, "/sessions", {"preset": "forking-server", "kernel": "6.18"})["id"]
    while not api(live_server, f"/sessions/{sid}/snapshot")["global"]["pages_sharing"]:
        api(live_server, f"/sessions/{sid}/step", {"n": 5})
    snap = api(live_server, f"/sessions/{sid}/snapshot")
    proc, vma = snap["procs"][0]["name"], snap["procs"][0]["vmas"][0]["name"]
    npages = snap["procs"][0]["vmas"][0]["npages"]
    page = next(
        i
        for i in range(npages)
        if api(live_server, f"/sessions/{sid}/pages/{proc}/{vma}/{i}")["stable_node"]
    )
    d = api(live_server, f"/sessions/{sid}/pages/{proc}/{vma}/{page}")
    ranges = d["stable_node"]["sharer_ranges"]
    assert len(ranges) < len(d["stable_node"]["sharers"])  # grouped
    pg = sized(1600, 1000)
    open_sid(pg, live_server, sid)
    pg.evaluate(
        "a => import('/static/js/inspector.js').then(m => m.inspectPage(window.__ksm.views[0],"
        " {proc: a[0], vma: a[1], page: a[2]}))",
        [proc, vma, page],
    )
    pg.wait_for_selector(".inspector .sharer-count", timeout=TIMEOUT)
    assert pg.locator(".inspector ul.sharers li").all_inner_texts() == ranges
    n = len(d["stable_node"]["sharers"])
    assert pg.inner_text(".inspector .sharer-count").startswith(f"{n} sharers in {len(ranges)}")


# ------------------------------------------------------------ future chapters (14)


def test_future_chapters_drawn_from_the_start_and_clickable(
    sized: Any, live_server: Any, screenshot: Any
) -> None:
    sid = api(live_server, "/sessions", {"preset": "vm-host", "kernel": "6.18"})["id"]
    chapters = api(live_server, f"/sessions/{sid}/snapshot")["chapters"]
    pg = sized(1280, 720)
    open_sid(pg, live_server, sid)
    pg.wait_for_function(
        "n => document.querySelectorAll('.chapter-bar .chapter.future').length === n",
        arg=len(chapters),
        timeout=TIMEOUT,
    )
    opacity = pg.evaluate(
        "() => getComputedStyle(document.querySelector('.chapter.future')).opacity"
    )
    assert float(opacity) < 1  # dimmed
    # they sit in scenario order along the bar
    lefts = pg.evaluate(
        "() => [...document.querySelectorAll('.chapter.future')].map(b => parseFloat(b.style.left))"
    )
    assert lefts == sorted(lefts) and len(set(lefts)) == len(lefts)
    target = [c for c in chapters if c["op"] == "checkpoint"][1]
    pg.click(f".chapter.future[data-at='{target['at']}']")
    pg.wait_for_function("() => !window.__ksm.chapters.running", timeout=TIMEOUT)
    pg.wait_for_function(
        "at => (window.__ksm.views[0].story?.pos ?? 0) > at", arg=target["at"], timeout=TIMEOUT
    )
    snap = api(live_server, f"/sessions/{sid}/snapshot")
    assert snap["what"] == {**snap["what"], "kind": "checkpoint", "name": target["name"]}
    assert snap["story"]["pos"] == target["at"] + 1
    # reached: drawn as a recorded mark now, the rest still dimmed ahead
    pg.wait_for_function(
        "at => !document.querySelector(`.chapter.future[data-at='${at}']`)"
        " && document.querySelector(`.chapter[data-step]:not(.future)`)",
        arg=target["at"],
        timeout=TIMEOUT,
    )
    ahead = [c for c in chapters if c["at"] > target["at"]]
    assert pg.locator(".chapter.future").count() == len(ahead)
    screenshot(pg, "chapters-future-1280")


# ------------------------------------------------------ side by side in presenter (14)


def test_side_by_side_presenter_1280_both_grids_and_zero_pages_on_screen(
    sized: Any, live_server: Any, screenshot: Any
) -> None:
    group = api(live_server, "/compare", {"preset": "vm-host", "kernels": ["6.1", "6.18"]})
    sids = [s["id"] for s in group["sessions"]]
    api(live_server, f"/sessions/{sids[0]}/step", {"n": 60})
    pg = sized(1280, 720)
    pg.goto(f"{live_server.url}/compare?a={sids[0]}&b={sids[1]}&presenter=1")
    pg.wait_for_function(
        "() => [...document.querySelectorAll('.side-by-side canvas.page-grid')]"
        ".every(c => c.dataset.kindCounts) && document.querySelectorAll("
        "\"td[data-counter='g.ksm_zero_pages']\").length === 2",
        timeout=TIMEOUT,
    )
    pg.wait_for_timeout(800)
    boxes = pg.evaluate(
        """() => [...document.querySelectorAll('.side-by-side canvas.page-grid'),
                  ...document.querySelectorAll("td[data-counter='g.ksm_zero_pages']"),
                  ...[...document.querySelectorAll("td[data-counter='g.ksm_zero_pages']")]
                    .map(td => td.parentElement.querySelector('th'))]
             .map(e => { const r = e.getBoundingClientRect();
                         return [r.left, r.top, r.right, r.bottom, r.height]; })"""
    )
    assert len(boxes) == 6
    for left, top, right, bottom, height in boxes:
        assert height > 0 and left >= 0 and top >= 0 and right <= 1280 and bottom <= 720, boxes
    # and the cell is not hidden behind its scrolling panel
    hidden = pg.evaluate(
        """() => [...document.querySelectorAll("td[data-counter='g.ksm_zero_pages']")].map(td => {
             const r = td.getBoundingClientRect();
             const p = td.closest('.counters').getBoundingClientRect();
             return r.top < p.top || r.bottom > p.bottom + 1; })"""
    )
    assert hidden == [False, False]
    texts = pg.locator("td[data-counter='g.ksm_zero_pages']").all_inner_texts()
    snaps = [api(live_server, f"/sessions/{s}/snapshot")["global"] for s in sids]
    assert texts == [fmt_value(g["ksm_zero_pages"], "pages") for g in snaps]
    for i, s in enumerate(sids):
        check_money(pg, live_server, s, i)
    screenshot(pg, "compare-presenter-1280")


@pytest.mark.parametrize(("w", "h", "presenter"), [(1280, 720, True), (1600, 1000, False)])
def test_side_by_side_views_start_level_and_fit(
    sized: Any, live_server: Any, w: int, h: int, presenter: bool
) -> None:
    """The zero-page story, 6.5 against 6.18 after the zero pages merged: the two views'
    heads, "what happened" lines, grids and charts start at the same height whatever each
    kernel's texts take (at 1600x1000 the 6.18 grid began 77 px lower; on the projector
    the 6.18 view ran off the right edge), and each view stays inside its half."""
    body = {"preset": "zero-pages-unmerge", "kernels": ["6.5", "6.18"]}
    group = api(live_server, "/compare", body)
    sids = [s["id"] for s in group["sessions"]]
    api(live_server, f"/sessions/{sids[0]}/step", {"n": 13})
    pg = sized(w, h)
    mode = "&presenter=1" if presenter else ""
    pg.goto(f"{live_server.url}/compare?a={sids[0]}&b={sids[1]}{mode}")
    pg.wait_for_function(
        "() => [...document.querySelectorAll('.side-by-side .what-happened .words')]"
        ".every(e => e.textContent.includes('zero page'))",
        timeout=TIMEOUT,
    )
    pg.wait_for_timeout(500)
    rows = pg.evaluate(
        """() => [...document.querySelectorAll('.side-by-side > .session-view')].map(v =>
             ['.view-head', '.what-happened', 'canvas.page-grid', '.charts'].map(s =>
               Math.round(v.querySelector(s).getBoundingClientRect().top)))"""
    )
    assert len(rows) == 2 and rows[0] == rows[1], rows
    edges = pg.evaluate(
        """() => [...document.querySelectorAll('.side-by-side > .session-view')].map(v => {
             const r = v.getBoundingClientRect();
             const inner = [...v.querySelectorAll('.view-head, .what-happened, .view-body')]
               .map(e => e.getBoundingClientRect().right);
             return [r.left, r.right, Math.max(...inner)]; })"""
    )
    (l0, r0, in0), (l1, r1, in1) = edges
    assert 0 <= l0 < r0 <= l1 < r1 <= w, edges
    assert in0 <= r0 + 1 and in1 <= r1 + 1, edges
    assert pg.js_errors == []


# ------------------------------------------------------------ upload without JS (14)


def test_upload_warning_without_javascript(browser: Any, live_server: Any, tmp_path: Path) -> None:
    doc = json.loads((REPO / "sim" / "presets" / "zero-pages-unmerge.json").read_text())
    doc["sysfs"] = {"use_zero_page": 1}
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(doc))
    ctx = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 720})
    try:
        pg = ctx.new_page()
        pg.goto(f"{live_server.url}/")
        pg.set_input_files("#upload input[type=file]", str(path))
        pg.click("#upload button[type=submit]")
        pg.wait_for_selector("#upload .upload-warnings", timeout=TIMEOUT)
        text = pg.inner_text("#upload .upload-warnings")
        assert "sysfs.use_zero_page" in text and "did you mean use_zero_pages?" in text
        assert "sid=" not in pg.url
        # a second press opens it as it is (the page carried the file's text)
        pg.click("#upload .upload-warnings button[type=submit]")
        pg.wait_for_url("**/session?sid=*", timeout=TIMEOUT)
        assert pg.locator(".session-view").count() == 1
    finally:
        ctx.close()
