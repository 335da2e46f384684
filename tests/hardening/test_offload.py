"""Issue 15, item 4: uploads are budgeted (every recorded checkpoint counts toward the
timeline's memory budget) and long simulation work runs off the event loop: the server
answers ``GET /`` while a big session computes. Against a real uvicorn server."""

from __future__ import annotations

import threading
import time
from typing import Any

from .conftest import Server, client


def scenario(pages: int, checkpoints: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {"op": "spawn", "proc": "A"},
        {"op": "mmap", "proc": "A", "vma": "heap", "pages": pages},
        {"op": "write", "proc": "A", "vma": "heap", "content": "A"},
        {"op": "madvise", "proc": "A", "vma": "heap", "advice": "MADV_MERGEABLE"},
    ]
    steps += [{"op": "checkpoint", "name": f"c{i}"} for i in range(checkpoints)]
    return {"format": "ksm-scenario/1", "name": "budget", "kernel": "6.18", "steps": steps}


def test_recorded_checkpoints_count_toward_the_memory_budget(tmp_path: Any) -> None:
    settings = {
        "max_pages": 100_000,
        "timeline_memory_mb": 8,
        "max_body_bytes": 1 << 20,
        "data_dir": tmp_path,
    }
    with Server(**settings) as server, client(server) as http:
        sid = http.post("/api/sessions", json={"scenario": scenario(50_000, 2_000)}).json()["id"]
        refused = None
        for _ in range(100):
            r = http.post(f"/api/sessions/{sid}/step", json={"n": 20})
            if r.status_code != 200:
                refused = r
                break
        assert refused is not None, "2,000 checkpoints of 50,000 pages fit in 8 MB?"
        assert refused.status_code == 413
        assert refused.json()["detail"]["field"] == "timeline_memory_mb"
        step = http.get(f"/api/sessions/{sid}").json()["step"]
        assert 4 < step < 2_004
        assert http.get(f"/api/sessions/{sid}/trace").status_code == 200


def test_get_index_answers_while_a_big_session_computes(tmp_path: Any) -> None:
    settings = {"max_pages": 400_000, "max_body_bytes": 1 << 20, "data_dir": tmp_path}
    with Server(**settings) as server, client(server) as http:
        body = scenario(300_000, 0)
        body["steps"].append({"op": "sysfs", "knob": "pages_to_scan", "value": 20_000})
        body["steps"].append({"op": "sysfs", "knob": "run", "value": 1})
        sid = http.post("/api/sessions", json={"scenario": body}).json()["id"]
        done: dict[str, Any] = {}

        def compute() -> None:
            with client(server) as other:
                t0 = time.monotonic()
                done["r"] = other.post(f"/api/sessions/{sid}/step", json={"n": 60})
                done["seconds"] = time.monotonic() - t0

        worker = threading.Thread(target=compute)
        worker.start()
        time.sleep(0.2)
        latencies = []
        while worker.is_alive():
            t = time.monotonic()
            assert http.get("/").status_code == 200
            latencies.append(time.monotonic() - t)
            # the session itself: its last state, not a half-computed one
            assert http.get(f"/api/sessions/{sid}").status_code == 200
            time.sleep(0.05)
        worker.join()
        assert done["r"].status_code == 200, done["r"].text
        assert done["seconds"] > 1.0, "the work was too short to show anything"
        # the loop kept serving while the worker computed (a blocked loop lets none through);
        # how fast it answered is bench/attack.py's figure, not a test's
        assert len(latencies) >= 5, latencies
