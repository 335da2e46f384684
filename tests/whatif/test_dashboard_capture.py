"""A capture opens as a dashboard session: uploaded on the index page (a real uvicorn)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from app.config import Settings
from app.server.threaded import free_port
from tests.app.conftest import TEST_SETTINGS, LiveServer

from .test_predict import quarter_capture


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    settings = Settings(**{**TEST_SETTINGS, "max_pages": 5000, "max_body_bytes": 256 * 1024})
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        yield client


def upload(http: httpx.Client, data: bytes, **form: str) -> httpx.Response:
    files = {"scenario": ("guests.ksmcap", data, "application/octet-stream")}
    return http.post("/session", files=files, data=form)


def test_an_uploaded_capture_opens_as_a_session(http: httpx.Client) -> None:
    data = quarter_capture(2000).to_bytes()
    r = upload(http, data, merge="all", kernel="6.18")
    assert r.status_code == 303, r.text
    url = r.headers["location"]
    sid = parse_qs(urlparse(url).query)["sid"][0]
    page = http.get(url, follow_redirects=True)
    assert page.status_code == 200
    assert "capture guests.ksmcap" in page.text
    snap = http.get(f"/api/sessions/{sid}/snapshot").json()
    # it opens at the captured state: the processes rebuilt (the grid), KSM still off
    assert [p["name"] for p in snap["procs"]] == ["qemu-system-x86-100"]
    assert snap["knobs"]["run"] == 0 and snap["story"]["steps"] == 2
    # its story: the "captured" checkpoint, then KSM is switched on
    r = http.post(f"/api/sessions/{sid}/step", json={"n": 2})
    assert r.status_code == 200, r.text
    assert http.get(f"/api/sessions/{sid}/snapshot").json()["knobs"]["run"] == 1
    r = http.post(f"/api/sessions/{sid}/step", json={"n": 60})
    assert r.status_code == 200, r.text
    snap = http.get(f"/api/sessions/{sid}/snapshot").json()
    assert snap["global"]["pages_sharing"] > 0
    # its link rebuilds it on another visit (from the stored recipe: the capture itself)
    q = parse_qs(urlparse(url).query)
    again = http.get(f"/session?r={q['r'][0]}&step=30")
    assert again.status_code == 303, again.text
    sid2 = parse_qs(urlparse(again.headers["location"]).query)["sid"][0]
    assert sid2 != sid
    snap2 = http.get(f"/api/sessions/{sid2}/snapshot").json()
    assert snap2["step"] == 30 and snap2["procs"][0]["name"] == "qemu-system-x86-100"
    assert snap2["knobs"]["run"] == 1


def test_bad_captures_get_a_clear_4xx(http: httpx.Client) -> None:
    r = upload(http, b"KSMCAPTURE\n\x05\x00\x00\x00{}")
    assert r.status_code == 422 and "capture" in r.text and "truncated" in r.text
    r = upload(http, quarter_capture(6000).to_bytes())  # over max_pages
    assert r.status_code == 413 and "5000" in r.text
    r = upload(http, quarter_capture(100).to_bytes(), merge="everything")
    assert r.status_code == 422 and "merge" in r.text
    # the server keeps serving
    assert upload(http, quarter_capture(100).to_bytes()).status_code == 303


def test_serve_with_a_capture(tmp_path: Path) -> None:
    cap = tmp_path / "guests.ksmcap"
    cap.write_bytes(quarter_capture(1000).to_bytes())
    port = free_port()
    env = {**os.environ, "KSMLAB_DATA_DIR": str(tmp_path / "data")}
    cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--capture", str(cap)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"capture {cap}: http://127.0.0.1:{port}/session?sid="), line
        url = line.split(": ", 1)[1].strip()
        for _ in range(100):  # until uvicorn listens
            try:
                r = httpx.get(url, timeout=10)
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert r.status_code == 200 and "capture guests.ksmcap" in r.text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    bad = tmp_path / "bad.ksmcap"
    bad.write_bytes(b"KSMCAPTURE\n")
    r2 = subprocess.run(cmd[:-1] + [str(bad)], capture_output=True, text=True, env=env, timeout=60)
    assert r2.returncode == 2 and r2.stderr.count("\n") == 1 and "truncated" in r2.stderr
