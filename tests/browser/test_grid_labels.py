"""The page grid's labels sit on the lanes they name, and the grid uses its space (issue: the
compare presenter at 1280x720 had small grids and labels pushed below short lanes).

The grid publishes what it drew on ``canvas.dataset.geometry`` (``static/js/page_grid.js``):
the cells' origin and scale, the gutter, each label's box and its lane's rows. Each label's
centre must fall within its lane's rows; independently of that record, the canvas pixel at
the label's centre in the first cell column must be a cell (not the background of a gap
row), and a click on the label must open that process in the inspector (the grid's own hit
test, by rows).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.browser.conftest import api

TIMEOUT = 60_000
BG = (11, 14, 19)  # grid_overlay.js BG, #0b0e13
VIEWPORTS = [(1280, 720), (1600, 1000)]


@pytest.fixture
def sized(browser: Any, live_server: Any) -> Any:
    from tests.browser.conftest import Offline

    made: list[tuple[Any, Any, Any]] = []

    def make(w: int, h: int) -> Any:
        ctx = browser.new_context(viewport={"width": w, "height": h}, device_scale_factor=1)
        off = Offline(live_server.url)
        ctx.route("**/*", off.route)
        pg = ctx.new_page()
        pg.js_errors = []
        pg.on("pageerror", lambda exc: pg.js_errors.append(str(exc)))
        made.append((ctx, off, pg))
        return pg

    yield make
    for ctx, off, pg in made:
        ctx.close()
        assert off.outside == [], f"requests left localhost: {off.outside}"
        assert pg.js_errors == [], f"JavaScript errors: {pg.js_errors}"


def lanes(server: Any, sid: str) -> list[tuple[str, str, int]]:
    snap = api(server, f"/sessions/{sid}/snapshot")
    return [(p["name"], v["name"], v["npages"]) for p in snap["procs"] for v in p["vmas"]]


def geometry(pg: Any, view: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(
        pg.eval_on_selector(f"{view} canvas.page-grid", "c => c.dataset.geometry")
    )
    return out


def pixel(pg: Any, view: str, x: float, y: float) -> tuple[int, int, int]:
    rgb = pg.eval_on_selector(
        f"{view} canvas.page-grid",
        "(c, [x, y]) => [...c.getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3)]",
        [round(x), round(y)],
    )
    return (rgb[0], rgb[1], rgb[2])


def wait_settled(pg: Any, views: list[str]) -> None:
    """The grids drawn at their final size (presenter mode fits the canvas after load)."""
    pg.wait_for_function(
        """views => views.every(v => {
             const c = document.querySelector(v + ' canvas.page-grid');
             if (!c || !c.dataset.geometry) return false;
             const g = JSON.parse(c.dataset.geometry), r = c.getBoundingClientRect();
             return g.labels.length && g.width === Math.round(r.width)
               && g.height === Math.round(r.height); })""",
        arg=views,
        timeout=TIMEOUT,
    )
    pg.wait_for_timeout(500)


def check_labels(
    pg: Any, view: str, want: list[tuple[str, str, int]], every: bool = True
) -> dict[str, Any]:
    """Every label on its lane's rows (by the record, the pixels and a click); returns the
    geometry."""
    geo = geometry(pg, view)
    got = [(label["proc"], label["vma"]) for label in geo["labels"]]
    if every:
        assert got == [(p, v) for p, v, _ in want], geo
    assert got, geo
    last = -1.0
    for label in geo["labels"]:
        centre = (label["top"] + label["bottom"]) / 2
        assert label["row_top"] <= centre <= label["row_bottom"], label
        assert 0 <= label["top"] and label["bottom"] <= geo["height"], label
        assert label["top"] >= last, (label, "overlaps the label above")
        assert label["right"] <= geo["gutter"] + 1, (label, geo["gutter"])
        last = label["bottom"]
        # a cell, not a gap row, in the first column at the label's height
        x = geo["ox"] + geo["scale"] / 2
        assert pixel(pg, view, x, centre) != BG, (label, geo)
    return geo


def click_labels(pg: Any, view: str, geo: dict[str, Any]) -> None:
    """A click on each label opens its process in the inspector."""
    for label in geo["labels"]:
        centre = (label["top"] + label["bottom"]) / 2
        pg.click(f"{view} canvas.page-grid", position={"x": 8, "y": centre})
        pg.wait_for_selector(
            f"{view} .inspector .inspect-proc[data-proc='{label['proc']}']", timeout=TIMEOUT
        )


@pytest.mark.parametrize("size", VIEWPORTS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_compare_presenter_grids_fill_and_labels_sit_on_their_rows(
    sized: Any, live_server: Any, size: tuple[int, int], screenshot: Any
) -> None:
    group = api(live_server, "/compare", {"preset": "vm-host", "kernels": ["6.1", "6.18"]})
    sids = [s["id"] for s in group["sessions"]]
    api(live_server, f"/sessions/{sids[0]}/step", {"n": 60})
    pg = sized(*size)
    pg.goto(f"{live_server.url}/compare?a={sids[0]}&b={sids[1]}&presenter=1")
    views = [f"#view-{sid}" for sid in sids]
    wait_settled(pg, views)
    want = lanes(live_server, sids[0])
    assert len(want) == 3
    for view in views:
        geo = check_labels(pg, view, want)
        # the grid uses its space: the cells fill the width or the height beside the gutter
        rows = sum(-(-n // geo["cols"]) for _, _, n in want) + len(want) - 1
        used_w = geo["cols"] * geo["scale"] / (geo["width"] - geo["gutter"] - 16)
        used_h = rows * geo["scale"] / (geo["height"] - 16)
        assert max(used_w, used_h) >= 0.8, (geo, used_w, used_h)
        # on screen, with cells big enough to see from the back of the room
        box = pg.locator(f"{view} canvas.page-grid").bounding_box()
        assert box["y"] + box["height"] <= size[1] and box["x"] + box["width"] <= size[0]
        assert geo["scale"] >= (5 if size[0] == 1280 else 8), geo
        # the gutter leaves most of the canvas to the cells
        assert geo["gutter"] <= 0.3 * geo["width"], geo
    click_labels(pg, views[0], geometry(pg, views[0]))
    if size == (1280, 720):
        screenshot(pg, "compare-presenter-labels-1280")


def test_session_page_1280_labels_sit_on_their_rows(sized: Any, live_server: Any) -> None:
    sid = api(live_server, "/sessions", {"preset": "vm-host", "kernel": "6.18"})["id"]
    api(live_server, f"/sessions/{sid}/step", {"n": 60})
    for extra in ("", "&presenter=1"):
        pg = sized(1280, 720)
        pg.goto(f"{live_server.url}/session?sid={sid}{extra}")
        wait_settled(pg, [f"#view-{sid}"])
        geo = check_labels(pg, f"#view-{sid}", lanes(live_server, sid))
        assert all(label["lines"] == 2 for label in geo["labels"]), geo
        click_labels(pg, f"#view-{sid}", geo)


def test_short_lanes_get_one_line_labels_on_their_rows(sized: Any, live_server: Any) -> None:
    """A big mapping beside small ones: the small lanes are a row or two high, their labels
    one line, centred on them (they used to be pushed below, onto the next lane)."""
    steps: list[dict[str, Any]] = [{"op": "spawn", "proc": "big"}]
    steps.append({"op": "mmap", "proc": "big", "vma": "heap", "pages": 6000})
    for p in "BCDE":
        steps += [
            {"op": "spawn", "proc": p},
            {"op": "mmap", "proc": p, "vma": "buf", "pages": 150},
        ]
    sid = api(live_server, "/sessions", {"scenario": {"name": "short-lanes", "steps": steps}})["id"]
    api(live_server, f"/sessions/{sid}/step", {"n": len(steps)})
    pg = sized(1280, 720)
    pg.goto(f"{live_server.url}/session?sid={sid}")
    wait_settled(pg, [f"#view-{sid}"])
    want = lanes(live_server, sid)
    geo = check_labels(pg, f"#view-{sid}", want)
    short = [label for label in geo["labels"] if label["row_bottom"] - label["row_top"] < 30]
    assert short and all(label["lines"] == 1 for label in short), geo
    click_labels(pg, f"#view-{sid}", geo)
