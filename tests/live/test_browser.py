"""The live page in headless Chromium (Playwright), served by a real uvicorn server.

Skips without ``/usr/bin/chromium`` or Playwright, unless ``KSMLAB_BROWSER_TESTS=1`` (CI),
where their absence is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.live.routes import create_live_app
from app.live.settings import LiveSettings
from app.server.threaded import ThreadedServer

from .conftest import WORKER_PID, Tree


@pytest.fixture
def browser_page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors
    try:
        yield page
    finally:
        context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def _add_process(tree: Tree, pid: int, merging: int) -> None:
    """A second KSM user, so that sorting has something to do."""
    src, dst = tree.proc_root / str(WORKER_PID), tree.proc_root / str(pid)
    shutil.copytree(src, dst)
    (dst / "comm").write_text("other\n")
    (dst / "ksm_stat").write_text(
        f"ksm_rmap_items 10\nksm_zero_pages 0\nksm_merging_pages {merging}\n"
        f"ksm_process_profit {merging * 4096 - 640}\nksm_merge_any: yes\nksm_mergeable: yes\n"
    )


def test_live_page_shows_chart_table_and_page_map(
    host_tree: Tree, browser_page: Any, tmp_path: Path
) -> None:
    _add_process(host_tree, 4242, merging=5)
    settings = LiveSettings(
        sys_root=host_tree.sys_root, proc_root=host_tree.proc_root, live_interval=0.2
    )
    page = browser_page
    with ThreadedServer(create_live_app(settings)) as srv:
        url = srv.url
        page.goto(f"{url}/live")
        # the counters chart: plotly drew it and it grows with the samples
        page.wait_for_selector("#counters-chart .main-svg")
        page.wait_for_function(
            "Number(document.querySelector('#counters-chart').dataset.points) >= 3"
        )
        legend = page.locator("#counters-chart .legendtext").all_text_contents()
        assert {"pages_shared", "pages_sharing", "ksm_zero_pages", "general_profit"} <= set(legend)
        # the process table, sorted by ksm_merging_pages (descending) by default
        page.wait_for_selector(f"#procs-table tbody tr[data-pid='{WORKER_PID}']")
        pids = page.locator("#procs-table tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.pid)"
        )
        assert pids == [str(WORKER_PID), "4242"]
        page.click("#procs-table th[data-key='pid']")  # numbers sort descending first
        page.click("#procs-table th[data-key='pid']")
        pids = page.locator("#procs-table tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.pid)"
        )
        assert pids == ["4242", str(WORKER_PID)]
        row = page.locator(f"#procs-table tbody tr[data-pid='{WORKER_PID}'] td")
        assert row.all_inner_texts()[:6] == [str(WORKER_PID), "python", "80", "32", "64", "388096"]
        assert page.locator("#derived-list dt[data-name='sharing_ratio']").inner_text() == (
            "sharing ratio: 31 sharers per KSM page"
        )
        # the page map of the chosen process
        page.click(f"#procs-table tbody tr[data-pid='{WORKER_PID}']")
        page.wait_for_function("document.querySelector('#page-map').dataset.k === '64'")
        canvas = page.locator("#page-map")
        assert canvas.get_attribute("data-z") == "32"
        assert canvas.get_attribute("data-cells") == "K" * 64 + "Z" * 32 + "A" * 16 + "-" * 16
        assert page.locator("#page-map-reason").is_hidden()
        shot = tmp_path / "live.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000


def test_old_kernel_shows_missing_and_an_unavailable_map(old_tree: Tree, browser_page: Any) -> None:
    (old_tree.proc_root / "kpageflags").unlink()
    settings = LiveSettings(
        sys_root=old_tree.sys_root, proc_root=old_tree.proc_root, live_interval=0.2
    )
    page = browser_page
    with ThreadedServer(create_live_app(settings)) as srv:
        url = srv.url
        page.goto(f"{url}/live")
        page.wait_for_selector("#counters-chart .main-svg")
        row = page.locator("#ksm-files tr[data-file='ksm_zero_pages'] td")
        assert row.nth(1).inner_text() == "missing"
        title = page.locator("#counters-chart .gtitle").text_content() or ""
        assert "ksm_zero_pages" in title and "general_profit" in title
        cells = page.locator(f"#procs-table tbody tr[data-pid='{WORKER_PID}'] td")
        assert cells.nth(3).inner_text() == "missing"  # ksm_zero_pages
        assert cells.nth(4).inner_text() == "64"
        page.click(f"#procs-table tbody tr[data-pid='{WORKER_PID}']")
        page.wait_for_selector("#page-map-reason:not([hidden])")
        assert "kpageflags does not exist" in page.locator("#page-map-reason").inner_text()


def test_live_page_on_this_host(browser_page: Any) -> None:
    """The real /sys and /proc: a process with mergeable memory (ksmd untouched) shows up.

    The worker would count as another KSM user for a kernel replay running meanwhile, so
    the test holds the host lock while it lives (it writes no knob).
    """
    if not Path("/sys/kernel/mm/ksm").is_dir():
        pytest.skip("this kernel has no KSM")
    from app.kernel.guard import LockTimeout, host_lock, lock_file_path

    from .host_ksm import worker

    has_mergeable_line = "ksm_mergeable" in Path("/proc/self/ksm_stat").read_text()
    page = browser_page
    try:
        with (
            host_lock(lock_file_path(), timeout=300),
            worker() as (proc, _),
            ThreadedServer(create_live_app(LiveSettings(live_interval=0.2))) as srv,
        ):
            url = srv.url
            page.goto(f"{url}/live")
            page.wait_for_selector("#counters-chart .main-svg")
            page.wait_for_selector("#procs-table thead th[data-key='ksm_merging_pages']")
            if not has_mergeable_line:  # before 6.14 an unscanned process shows zeros only
                return
            row = f"#procs-table tbody tr[data-pid='{proc.pid}']"
            page.wait_for_selector(row)
            assert page.locator(f"{row} td").nth(6).inner_text() == "yes"
            page.click(row)
            page.wait_for_function(
                "document.querySelector('#page-map').dataset.cells.length === 128"
                " || !document.querySelector('#page-map-reason').hidden"
            )
            ksmd_stopped = Path("/sys/kernel/mm/ksm/run").read_text().strip() != "1"
            if os.geteuid() == 0 and ksmd_stopped:  # written pages stay plain anonymous
                cells = page.locator("#page-map").get_attribute("data-cells")
                assert cells == "A" * 112 + "-" * 16
            else:
                assert "root" in page.locator("#page-map-reason").inner_text()
    except LockTimeout:
        pytest.skip("another kernel user held /var/tmp/ksmlab-kernel.lock for 300 s")
