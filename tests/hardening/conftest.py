"""Real uvicorn servers (the ``tests/app`` fixture pattern) with hardening settings."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.config import Settings
from tests.app.conftest import LiveServer
from tests.conftest import run  # noqa: F401 - re-exported for the tests here

TOKEN = "presenter-s3cret"
BASE: dict[str, Any] = {
    "max_sessions": 64,
    "max_pages": 50_000,
    "max_body_bytes": 64 * 1024,
    "ws_queue": 8,
    "idle_expiry_seconds": 600,
    "checkpoint_interval": 8,
}


class Server(LiveServer):
    """A ``tests/app`` live server, optionally on a given port and serving a given app (to
    restart a server there, with its sessions or without)."""

    def __init__(self, port: int | None = None, app: Any = None, **settings: Any):
        super().__init__(Settings(**{**BASE, **settings}), port, app)


@pytest.fixture(scope="module")
def open_server() -> Iterator[Server]:
    """No token: the loopback default."""
    with Server() as live:
        yield live


@pytest.fixture(scope="module")
def token_server() -> Iterator[Server]:
    """A server that requires the presenter's token for control."""
    with Server(token=TOKEN) as live:
        yield live


def client(server: Server, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, **kw)


def create(server: Server, token: str | None = None, **body: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = body or {"preset": "zero-pages-unmerge"}
    with client(server) as http:
        r = http.post("/api/sessions", json=body, headers=headers)
    assert r.status_code == 201, r.text
    info: dict[str, Any] = r.json()
    return info


async def ws_open(server: Server, sid: str, query: str = "", **kw: Any) -> ClientConnection:
    url = f"{server.ws_url}/ws/sessions/{sid}{query}"
    return await connect(url, max_size=None, compression=None, **kw)


async def recv(ws: ClientConnection, *types: str, timeout: float = 20) -> dict[str, Any]:
    """The next message of one of ``types`` (skipping others)."""
    while True:
        msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if not types or msg["type"] in types:
            return msg
