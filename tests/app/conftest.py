"""A real uvicorn server on a free port (in a thread), httpx and websockets clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.config import Settings
from app.server.app import create_app
from app.server.cli import uvicorn_options
from app.server.threaded import ThreadedServer
from tests.conftest import run  # noqa: F401 - re-exported for the tests here


class LiveServer(ThreadedServer):
    """The dashboard's app with ``settings``, served as ``ksmlab serve`` serves it."""

    def __init__(self, settings: Settings, port: int | None = None, app: Any = None):
        self.settings = settings
        super().__init__(app or create_app(settings), port, **uvicorn_options(settings))


TEST_SETTINGS: dict[str, Any] = {
    "max_sessions": 400,
    "max_pages": 200_000,
    "max_body_bytes": 64 * 1024,
    "ws_queue": 16,
    "idle_expiry_seconds": 600,
    "checkpoint_interval": 8,
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
