"""uvicorn in a thread: a real server on a free loopback port, for tests and benchmarks.

``with ThreadedServer(app, **uvicorn_options) as srv: ...`` starts uvicorn serving ``app``
on ``127.0.0.1`` and returns once it accepts connections (``srv.url``, ``srv.ws_url``);
leaving the block asks it to exit and joins the thread.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class ThreadedServer:
    def __init__(self, app: Any, port: int | None = None, **options: Any) -> None:
        self.app = app
        self.port = port or free_port()
        options.setdefault("log_level", "warning")
        self.server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=self.port, **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    def __enter__(self) -> ThreadedServer:
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
