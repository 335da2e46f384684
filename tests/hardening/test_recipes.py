"""Nothing a user made is lost (issue 15): every session's recipe is stored in SQLite the
moment it changes, and its link (``/session?r=<hash>&step=N``) rebuilds the identical state
(page contents, counters, step) after eviction, a restart, or ``kill -9`` of the server."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.server.threaded import free_port

from .conftest import Server, client

PRESET = "zero-pages-unmerge"


def small(pages: int = 12) -> dict[str, Any]:
    return {
        "format": "ksm-scenario/1",
        "name": "recipes",
        "kernel": "6.18",
        "steps": [
            {"op": "spawn", "proc": "A"},
            {"op": "mmap", "proc": "A", "vma": "heap", "pages": pages},
            {"op": "write", "proc": "A", "vma": "heap", "content": "A", "pages": f"0-{pages - 1}"},
            {"op": "madvise", "proc": "A", "vma": "heap", "advice": "MADV_MERGEABLE"},
            {"op": "sysfs", "knob": "run", "value": 1},
        ],
    }


def state(http: httpx.Client, sid: str) -> dict[str, Any]:
    """Everything a link must rebuild: page contents and structure, every counter, step."""
    info = http.get(f"/api/sessions/{sid}").json()
    snapshot = http.get(f"/api/sessions/{sid}/snapshot").json()
    for key in ("session", "ts"):
        snapshot.pop(key)
    contents = []
    for page in range(4):
        r = http.get(f"/api/sessions/{sid}/pages/A/heap/{page}")
        contents.append(r.json() if r.status_code == 200 else r.status_code)
    return {
        "step": info["step"],
        "head": info["head"],
        "pages": info["pages"],
        "snapshot": snapshot,
        "contents": contents,
        "state": http.get(f"/api/sessions/{sid}/state").json(),
        "counters": http.get(f"/api/sessions/{sid}/counters.csv").text,
    }


def link(http: httpx.Client, sid: str) -> str:
    share = http.get(f"/api/sessions/{sid}/share").json()
    return f"/session?r={share['r']}&step={share['step']}"


def open_link(http: httpx.Client, url: str) -> str:
    r = http.get(url)
    assert r.status_code == 303, r.text[:500]
    sid = parse_qs(urlsplit(r.headers["location"]).query)["sid"][0]
    return sid


def post(http: httpx.Client, path: str, **body: Any) -> dict[str, Any]:
    r = http.post(path, json=body or None)
    assert r.status_code in (200, 201), (path, r.text)
    out: dict[str, Any] = r.json()
    return out


# ----------------------------------------------------------------- a real server process
class Process:
    """``ksmlab serve`` as its own process, on ``port``, storing recipes in ``data``."""

    def __init__(self, data: Path, port: int):
        self.data, self.port = data, port
        self.url = f"http://127.0.0.1:{port}"
        script = textwrap.dedent(
            f"""
            import uvicorn
            from app.config import Settings
            from app.server.app import create_app
            from app.server.cli import uvicorn_options
            s = Settings(data_dir={str(data)!r}, port={port}, max_pages=50_000)
            uvicorn.run(create_app(s), host="127.0.0.1", port={port}, **uvicorn_options(s))
            """
        )
        self.proc = subprocess.Popen([sys.executable, "-c", script])
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).is_success:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                raise RuntimeError("the server did not start")
            time.sleep(0.1)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture()
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def test_kill_9_loses_nothing(data_dir: Path) -> None:
    port = free_port()
    first = Process(data_dir, port)
    try:
        with httpx.Client(base_url=first.url, timeout=30) as http:
            # an uploaded scenario, stepped by hand, a knob written
            up = post(http, "/api/sessions", scenario=small())["id"]
            post(http, f"/api/sessions/{up}/step", n=4)
            post(http, f"/api/sessions/{up}/knob", knob="pages_to_scan", value=3)
            post(http, f"/api/sessions/{up}/step", n=2, grain="page")
            # a fork of it at step 3, with an op of its own
            fork = post(http, f"/api/sessions/{up}/fork?step=3")["id"]
            post(http, f"/api/sessions/{fork}/step", n=2)
            op = {"op": "write", "proc": "A", "vma": "heap", "pages": 1, "content": "Q"}
            post(http, f"/api/sessions/{fork}/inject", op=op)
            post(http, f"/api/sessions/{fork}/step", n=1)
            # a preset, playing, with an op injected while it plays; the link taken mid-play
            live = post(http, "/api/sessions", preset=PRESET)["id"]
            post(http, f"/api/sessions/{live}/speed", batches_per_second=50)
            post(http, f"/api/sessions/{live}/play")
            time.sleep(0.3)
            op = {"op": "write", "proc": "A", "vma": "heap", "pages": 0, "content": "Q"}
            injected = http.post(f"/api/sessions/{live}/inject", json={"op": op})
            if injected.status_code != 200:  # the preset's names: take one from its state
                procs = http.get(f"/api/sessions/{live}/state").json()
                pytest.fail(f"inject failed: {injected.text} {str(procs)[:400]}")
            time.sleep(0.3)
            mid_play = link(http, live)
            post(http, f"/api/sessions/{live}/pause")
            step = int(parse_qs(urlsplit(mid_play).query)["step"][0])
            # back to the link's step by replaying it (a seek onto a step shows no summary)
            post(http, f"/api/sessions/{live}/seek", step=step - 1)
            post(http, f"/api/sessions/{live}/step", n=1)
            links = {"upload": link(http, up), "fork": link(http, fork), "mid-play": mid_play}
            expected = {
                "upload": state(http, up),
                "fork": state(http, fork),
                "mid-play": state(http, live),
            }
            assert "'content': 'Q'" in str(expected["mid-play"]["contents"])
    finally:
        first.kill9()
    second = Process(data_dir, port)
    try:
        with httpx.Client(base_url=second.url, timeout=60) as http:
            assert http.get("/healthz").json()["sessions"] == 0
            for name, url in links.items():
                sid = open_link(http, url)
                assert state(http, sid) == expected[name], name
    finally:
        second.kill9()


def test_eviction_loses_nothing_and_identical_links_share(tmp_path: Path) -> None:
    with Server(max_sessions=3, data_dir=tmp_path) as server, client(server) as http:
        sid = post(http, "/api/sessions", scenario=small())["id"]
        post(http, f"/api/sessions/{sid}/step", n=3)
        post(
            http,
            f"/api/sessions/{sid}/inject",
            op={"op": "write", "proc": "A", "vma": "heap", "pages": 2, "content": "Q"},
        )
        post(http, f"/api/sessions/{sid}/step", n=2)
        url = link(http, sid)
        before = state(http, sid)
        # a class of students: far more sessions than the limit, none refused
        for _ in range(8):
            post(http, "/api/sessions", preset=PRESET)
        assert sid not in {s["id"] for s in http.get("/api/sessions").json()}
        again = open_link(http, url)
        assert state(http, again) == before
        # the same link again: the same session, not a new one
        assert open_link(http, url) == again
        assert open_link(http, f"/session?preset={PRESET}&step=2") == open_link(
            http, f"/session?preset={PRESET}&step=2"
        )
        # a link whose recipe this server never stored
        r = http.get("/session?r=" + "0" * 32 + "&step=1")
        assert r.status_code == 404 and "recipe" in r.text


def test_the_index_lists_open_sessions_and_closes_them(tmp_path: Path) -> None:
    with Server(data_dir=tmp_path) as server, client(server) as http:
        sid = post(http, "/api/sessions", preset=PRESET)["id"]
        url = link(http, sid)
        page = http.get("/").text
        assert f'data-session="{sid}"' in page and f"/ui/sessions/{sid}/close" in page
        evil = {"Origin": "http://evil.example"}
        assert http.post(f"/ui/sessions/{sid}/close", headers=evil).status_code == 403
        r = http.post(f"/ui/sessions/{sid}/close", headers={"Origin": server.url})
        assert r.status_code == 303
        assert http.get(f"/api/sessions/{sid}").status_code == 404
        assert f'data-session="{sid}"' not in http.get("/").text
        assert open_link(http, url) != sid  # its link still rebuilds it
