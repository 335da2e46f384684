"""Issue 15, item 2: viewers that finish the websocket handshake and never read hold no
snapshot each; the bytes all viewers hold unsent are bounded by one budget, and a viewer
that does not read is dropped. Against a real uvicorn server, with real sockets."""

from __future__ import annotations

import socket
import time
from typing import Any

from .conftest import Server, client

PAGES = 200_000


def big() -> dict[str, Any]:
    return {
        "format": "ksm-scenario/1",
        "name": "big",
        "kernel": "6.18",
        "steps": [
            {"op": "spawn", "proc": "A"},
            {"op": "mmap", "proc": "A", "vma": "heap", "pages": PAGES},
            {"op": "write", "proc": "A", "vma": "heap", "content": "A"},
            {"op": "madvise", "proc": "A", "vma": "heap", "advice": "MADV_MERGEABLE"},
        ],
    }


def stuck_viewer(server: Server, sid: str) -> socket.socket:
    """A websocket that completes its handshake and then never reads."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", server.port))
    s.sendall(
        (
            f"GET /ws/sessions/{sid} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert s.recv(12) == b"HTTP/1.1 101"
    return s


def test_stuck_viewers_are_bounded_and_dropped(tmp_path: Any) -> None:
    total = 16 << 20
    settings = {
        "max_pages": PAGES,
        "max_body_bytes": 1 << 20,
        "viewer_bytes_total": total,
        "viewer_stall_seconds": 1.5,
        "data_dir": tmp_path,
    }
    with Server(**settings) as server, client(server) as http:
        r = http.post("/api/sessions", json={"scenario": big()})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        http.post(f"/api/sessions/{sid}/step", json={"n": 4})
        snapshot = len(http.get(f"/api/sessions/{sid}/snapshot").content)
        assert snapshot > 1 << 20  # each stuck viewer would hold this much
        budget = server.app.state.manager.viewer_budget
        socks = [stuck_viewer(server, sid) for _ in range(40)]
        try:
            t0 = time.monotonic()
            worst = 0.0
            while time.monotonic() - t0 < 4:
                t = time.monotonic()
                assert http.get("/").status_code == 200
                worst = max(worst, time.monotonic() - t)
                time.sleep(0.1)
            # 40 x the snapshot would be held without the budget
            assert budget.peak <= total + snapshot + 64 * 1024, (budget.peak, snapshot)
            assert budget.dropped >= 1
            viewers = http.get(f"/api/sessions/{sid}").json()["viewers"]
            assert viewers < 40
            deadline = time.monotonic() + 30
            while budget.used and time.monotonic() < deadline:
                time.sleep(0.2)
            assert budget.used == 0  # every stuck viewer dropped, its buffer freed
            assert worst < 1.0
        finally:
            for s in socks:
                s.close()
