"""A real uvicorn server on a free port (in a thread), httpx and websockets clients."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from app.config import Settings
from app.server.app import create_app
from app.server.cli import uvicorn_options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveServer:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.port = free_port()
        self.app = create_app(settings)
        opts = uvicorn_options(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, **opts)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


TEST_SETTINGS: dict[str, Any] = {
    "max_sessions": 400, "max_pages": 200_000, "max_body_bytes": 64 * 1024, "ws_queue": 16,
    "idle_expiry_seconds": 600, "checkpoint_interval": 8,
}


@pytest.fixture(scope="session")
def server() -> Iterator[LiveServer]:
    with LiveServer(Settings(**TEST_SETTINGS)) as live:
        yield live


@pytest.fixture()
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def new_session(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post("/api/sessions", json=body)
    assert r.status_code == 201, r.text
    info: dict[str, Any] = r.json()
    return info


async def open_ws(server: LiveServer, sid: str) -> ClientConnection:
    return await connect(f"{server.ws_url}/ws/sessions/{sid}", max_size=None, compression=None)


async def recv(ws: ClientConnection, *types: str, timeout: float = 20) -> dict[str, Any]:
    """The next message of one of ``types`` (skipping others, e.g. ``state``)."""
    while True:
        msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if not types or msg["type"] in types:
            return msg


def run(coro: Any) -> Any:
    return asyncio.run(coro)
