"""The websocket Origin check that both servers (the lab and ``--live-only``) install.

:class:`OriginCheck` is ASGI middleware: it refuses (closes with 1008, which the client sees
as HTTP 403) a websocket handshake whose ``Origin`` header is not this server's own scheme
and ``host:port``; a handshake without ``Origin`` (a non-browser client) is accepted. HTTP
requests pass untouched. Depends on nothing but the standard library.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("ksmlab.server")


def origin_allowed(scope: Scope) -> bool:
    """A websocket handshake's Origin: absent, or this server's own scheme and host:port."""
    headers = {k.lower(): v for k, v in scope.get("headers", [])}
    origin = headers.get(b"origin")
    if origin is None:
        return True
    host = headers.get(b"host", b"").decode("latin-1").lower()
    try:
        parts = urlsplit(origin.decode("latin-1").lower())
    except ValueError:
        return False
    ours = "https" if scope.get("scheme") in ("wss", "https") else "http"
    if parts.scheme != ours or not parts.netloc:
        return False
    default = "443" if parts.scheme == "https" else "80"
    return _with_port(parts.netloc, default) == _with_port(host, default)


def _with_port(netloc: str, default: str) -> str:
    if netloc.endswith("]") or ":" not in netloc.rsplit("]", 1)[-1]:
        return f"{netloc}:{default}"
    return netloc


class OriginCheck:
    """ASGI middleware: refuse (HTTP 403) a websocket handshake from another origin."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            log.warning("websocket %s refused: foreign Origin", scope.get("path"))
            await send({"type": "websocket.close", "code": 1008, "reason": "origin not allowed"})
            return
        await self.app(scope, receive, send)
