"""Issue 15, items 6, 7 and 11 against a real uvicorn server on loopback: slowloris (header
deadline, connection cap), ``/ws/live`` (one shared sampler, a connection limit) and the
host view needing the token once the server is reachable from the network."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx
from websockets.asyncio.client import connect

from .conftest import TOKEN, Server, client, run

BEARER = {"Authorization": f"Bearer {TOKEN}"}


def half_sent(server: Server, n: int) -> list[socket.socket]:
    """``n`` connections that send part of a request head and then nothing."""
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        out.append(s)
    return out


def closed(s: socket.socket, wait: float) -> bool:
    s.settimeout(wait)
    try:
        return s.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slowloris_half_sent_requests_are_dropped(tmp_path: Any) -> None:
    with Server(header_timeout=1.0, max_connections=150, data_dir=tmp_path) as server:
        socks = half_sent(server, 100)
        try:
            with client(server) as http:
                t0 = time.monotonic()
                assert http.get("/").status_code == 200
                assert time.monotonic() - t0 < 1.0
            time.sleep(1.5)
            assert all(closed(s, 2.0) for s in socks)  # the header deadline
            # beyond the cap, new connections are closed at once; the server still answers
            more = half_sent(server, 200)
            assert sum(closed(s, 0.5) for s in more) >= 50
            time.sleep(1.5)
            with client(server) as http:
                assert http.get("/healthz").status_code == 200
            for s in more:
                s.close()
        finally:
            for s in socks:
                s.close()


def test_keep_alive_connection_gets_a_new_header_deadline(tmp_path: Any) -> None:
    with Server(header_timeout=1.0, keep_alive_seconds=5, data_dir=tmp_path) as server:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b"200 OK" in s.recv(4096)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the end
        assert closed(s, 3.0)
        s.close()


async def _live(server: Server, query: str = "", **kw: Any) -> Any:
    return await connect(f"{server.ws_url}/ws/live{query}", max_size=None, **kw)


def test_live_viewers_share_one_sampler_and_are_limited(tmp_path: Any) -> None:
    with Server(max_live_viewers=12, data_dir=tmp_path) as server:

        async def go() -> tuple[int, str]:
            socks = [await _live(server) for _ in range(12)]
            for ws in socks:
                await ws.send(json.dumps({"type": "interval", "seconds": 0.1}))
            for _ in range(10):  # ~1 s of samples on every socket
                for ws in socks:
                    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] in (
                        "sample",
                        "error",
                    )
            extra = await _live(server)
            refused = json.loads(await asyncio.wait_for(extra.recv(), 10))
            for ws in socks:
                await ws.close()
            reads: int = server.app.state.live_sampler.reads
            return reads, refused.get("detail", "")

        reads, refused = run(go())
        assert "at most 12 live viewers" in refused
        assert reads < 60  # 12 viewers x 10 samples: 120 reads if each read on its own


def test_host_view_needs_the_token_beyond_loopback(tmp_path: Any) -> None:
    with Server(token=TOKEN, host="0.0.0.0", data_dir=tmp_path) as server:
        with client(server) as http:
            for path in ("/api/live/procs", "/api/live/ksm", "/api/live/procs/1/pages"):
                r = http.get(path)
                assert r.status_code == 401 and "token" in r.text, path
            assert http.get("/api/live/procs", headers=BEARER).status_code == 200
            assert http.get(f"/api/live/ksm?token={TOKEN}").status_code == 200

        async def go() -> tuple[dict[str, Any], dict[str, Any]]:
            ws = await _live(server)
            refused = json.loads(await asyncio.wait_for(ws.recv(), 10))
            ok = await _live(server, f"?token={TOKEN}")
            sample = json.loads(await asyncio.wait_for(ok.recv(), 10))
            await ok.close()
            return refused, sample

        refused, sample = run(go())
        assert refused["type"] == "error" and "token" in refused["detail"]
        assert sample["type"] == "sample"

    with Server(data_dir=tmp_path) as loopback, httpx.Client(base_url=loopback.url) as http:
        assert http.get("/api/live/procs").status_code == 200  # loopback: no token needed
