"""The live view on the real kernel (``KSMLAB_KERNEL_TESTS=1``, root, KSM).

A worker of the kernel replayer (``app/kernel/worker.py``) maps 128 mergeable pages (32 "A",
32 "B", 32 zeros, 16 unique, 16 untouched); ksmd runs with use_zero_pages=1 under the host
lock with every knob saved and restored (``host_ksm.py``). The live stream must show the
worker's counters and the page map its KSM pages and zero pages.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.live.routes import create_live_app
from app.live.settings import LiveSettings

from .host_ksm import MERGE_KNOBS, ksm_host, wait_merged

pytestmark = pytest.mark.skipif(
    os.environ.get("KSMLAB_KERNEL_TESTS") != "1",
    reason="writes KSM knobs on the host: set KSMLAB_KERNEL_TESTS=1 (root, KSM kernel)",
)

EXPECTED = "K" * 64 + "Z" * 32 + "A" * 16 + "-" * 16


def _start_worker() -> Any:
    from app.kernel.worker import spawn_worker

    w = spawn_worker("live-test", thp_off=True)
    w.call("mmap", vma="area", pages=128)
    w.call("write", vma="area", content="A", ranges=[[0, 32]])
    w.call("write", vma="area", content="B", ranges=[[32, 64]])
    w.call("write", vma="area", content="zero", ranges=[[64, 96]])
    w.call("write", vma="area", content="unique", ranges=[[96, 112]], serial=1)
    w.call("madvise", vma="area", advice="MADV_MERGEABLE")
    return w


def test_live_view_sees_ksm_pages_and_zero_pages() -> None:
    assert os.geteuid() == 0, "the kernel tests need root"
    assert Path("/sys/kernel/mm/ksm/run").exists(), "this kernel has no KSM"
    with ksm_host(MERGE_KNOBS) as sysfs:
        w = _start_worker()  # fork before TestClient starts its threads
        try:
            client = TestClient(create_live_app(LiveSettings(live_interval=0.2)))
            with client.websocket_connect("/ws/live") as ws:
                before = ws.receive_json()
                (mine,) = [p for p in before["procs"]["procs"] if p["pid"] == w.pid]
                assert mine["mergeable"] is True and mine["ksm_merging_pages"] == 0
                sysfs.write("run", 1)
                wait_merged(w.pid, merging=64, zero=32)
                deadline = time.monotonic() + 30
                while True:
                    msg = ws.receive_json()
                    assert msg["type"] == "sample", msg
                    procs = {p["pid"]: p for p in msg["procs"]["procs"]}
                    values = msg["ksm"]["values"]
                    if procs.get(w.pid, {}).get("ksm_merging_pages") == 64:
                        break
                    assert time.monotonic() < deadline, "the stream never showed the merge"
            mine = procs[w.pid]
            assert (mine["ksm_rmap_items"], mine["ksm_zero_pages"]) == (80, 32)
            assert mine["ksm_process_profit"] == (64 + 32) * 4096 - 80 * 64
            assert values["run"] == 1
            assert values["pages_shared"] >= 2 and values["pages_sharing"] >= 62
            assert values["ksm_zero_pages"] >= 32

            pm = client.get(f"/api/live/procs/{w.pid}/pages").json()
            assert pm["available"], pm["reason"]
            assert pm["cells"] == EXPECTED, pm["cells"]
            groups = dict(pm["groups"])
            assert len({groups[i] for i in range(32)}) == 1
            assert len({groups[i] for i in range(32, 64)}) == 1
            assert groups[0] != groups[32]
            assert pm["classification"] == "KPF_KSM"
            window = client.get(
                f"/api/live/procs/{w.pid}/pages", params={"offset": 90, "limit": 10}
            ).json()
            assert window["cells"] == "ZZZZZZAAAA"
        finally:
            w.kill()
    # ksm_host restored every knob (run last) and checked them, still under the lock
