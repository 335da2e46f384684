"""Faults with a real uvicorn server and real clients: a viewer that vanishes mid-frame, a
client that connects and never reads, a session deleted while viewers watch."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import Server, recv, run, ws_open

PAGES = 20_000


@pytest.fixture(scope="module")
def fault_server() -> Iterator[Server]:
    with Server(max_pages=100_000, ws_queue=8, max_speed=1000.0) as live:
        yield live


def endless(pages: int = PAGES) -> dict[str, Any]:
    """ksmd scanning ``pages`` pages forever: a session that always has a next step."""
    steps = [
        {"op": "spawn", "proc": "A"},
        {"op": "mmap", "proc": "A", "vma": "heap", "pages": pages},
        {"op": "write", "proc": "A", "vma": "heap", "content": "unique", "pages": f"0-{pages - 1}"},
        {"op": "madvise", "proc": "A", "vma": "heap", "advice": "MADV_MERGEABLE"},
        {"op": "sysfs", "knob": "pages_to_scan", "value": 500},
        {"op": "sysfs", "knob": "run", "value": 1},
    ]
    return {"format": "ksm-scenario/1", "name": "endless", "kernel": "6.18", "steps": steps}


def start(server: Server, speed: float, play: bool = True) -> str:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post("/api/sessions", json={"scenario": endless()})
        assert r.status_code == 201, r.text
        sid: str = r.json()["id"]
        http.post(f"/api/sessions/{sid}/speed", json={"batches_per_second": speed})
        if play:
            http.post(f"/api/sessions/{sid}/play")
    return sid


def raw_viewer(server: Server, sid: str, rcvbuf: int | None = None) -> socket.socket:
    """A websocket handshake over a bare TCP socket; the caller decides what to read."""
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET /ws/sessions/{sid} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def viewers(server: Server, sid: str) -> list[dict[str, int]]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        stats: list[dict[str, int]] = http.get(f"/api/sessions/{sid}/viewers").json()
        return stats


async def steps_seen(ws: Any, seconds: float) -> int:
    """How many steps a reading viewer advanced in ``seconds``."""
    first = last = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 1))
        except TimeoutError:
            continue
        if msg["type"] in ("delta", "snapshot"):
            first = msg["step"] if first is None else first
            last = msg["step"]
    return 0 if first is None or last is None else last - first


def no_server_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def test_viewer_vanishes_mid_frame(fault_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    sid = start(fault_server, 200)

    async def go() -> None:
        good = await ws_open(fault_server, sid)
        gone = []
        for _ in range(5):
            s = raw_viewer(fault_server, sid)
            header = s.recv(2)  # the first bytes of the snapshot frame, not the rest
            assert header[0] == 0x81 and (header[1] & 0x7F) in (126, 127)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # RST: gone mid-frame while the session plays
            gone.append(s)
            await asyncio.sleep(0.1)
        assert await steps_seen(good, 2) > 50  # the reading viewer keeps its pace
        deadline = time.monotonic() + 10
        while len(viewers(fault_server, sid)) != 1:
            assert time.monotonic() < deadline, viewers(fault_server, sid)
            await asyncio.sleep(0.2)
        await good.close()

    run(go())
    with httpx.Client(base_url=fault_server.url) as http:
        assert http.get("/healthz").status_code == 200
        http.delete(f"/api/sessions/{sid}")
    no_server_errors(caplog)


def test_client_that_never_reads(fault_server: Server) -> None:
    sid = start(fault_server, 50)
    http = httpx.Client(base_url=fault_server.url, timeout=30)
    stuck: socket.socket | None = None

    async def go() -> None:
        nonlocal stuck
        fast = await ws_open(fault_server, sid)
        await recv(fast, "snapshot")
        alone = await steps_seen(fast, 3)  # the session's pace with one reading viewer
        http.post(f"/api/sessions/{sid}/pause")
        stuck = raw_viewer(fault_server, sid, rcvbuf=4096)  # connects, never reads again
        async with httpx.AsyncClient(base_url=fault_server.url, timeout=30) as ahttp:
            for i in range(150):  # every seek sends each viewer a full snapshot (~200 kB)
                await ahttp.post(f"/api/sessions/{sid}/seek", json={"step": 3 + i % 3})
        stats = viewers(fault_server, sid)
        assert len(stats) == 2 and all(v["queue"] <= v["limit"] for v in stats), stats
        # a snapshot replaces what is queued: the stuck viewer fell behind, holding a few
        # frames, not 150 snapshots; the reader got what it could take
        assert min(v["sent"] for v in stats) < max(v["sent"] for v in stats), stats
        session = fault_server.app.state.manager.sessions[sid]
        for v in session.viewers:  # what waits in the server's transport stays bounded too
            assert len(v.queue) <= v.maxlen
            if v.raw is not None:
                assert v.raw.proto.transport.get_write_buffer_size() < 4 << 20
        while True:  # the reader catches up with the flood
            try:
                await asyncio.wait_for(fast.recv(), 1)
            except TimeoutError:
                break
        http.post(f"/api/sessions/{sid}/play")
        with_stuck = await steps_seen(fast, 3)
        print(f"steps in 3 s: {alone} alone, {with_stuck} with a stuck client")
        assert alone > 0 and with_stuck >= 0.6 * alone, (alone, with_stuck)  # same pace
        assert all(v["queue"] <= v["limit"] for v in viewers(fault_server, sid))
        await fast.close()

    try:
        run(go())
    finally:
        if stuck is not None:
            stuck.close()
        http.delete(f"/api/sessions/{sid}")
        http.close()


def test_session_deleted_while_viewers_watch(fault_server: Server) -> None:
    sid = start(fault_server, 50)

    async def go() -> None:
        watchers = [await ws_open(fault_server, sid) for _ in range(4)]
        for w in watchers:
            await recv(w, "snapshot")
        async with httpx.AsyncClient(base_url=fault_server.url) as http:
            assert (await http.delete(f"/api/sessions/{sid}")).status_code == 204
        for w in watchers:
            end = await recv(w, "end")
            assert end["reason"] == "deleted" and end["session"] == sid
            await asyncio.wait_for(w.wait_closed(), 10)
            assert w.close_code == 1000
        async with httpx.AsyncClient(base_url=fault_server.url) as http:
            assert (await http.get(f"/api/sessions/{sid}")).status_code == 404
            assert (await http.get("/healthz")).status_code == 200

    run(go())
