"""The Host and Origin checks that both servers (the lab and ``--live-only``) install.

:class:`OriginCheck` is ASGI middleware:

- **Host** (DNS rebinding): when the server is given its names (:func:`allowed_hosts`: a
  loopback server always is: ``localhost``, ``127.0.0.1``, ``::1``, the bound address), a
  request or websocket whose ``Host`` header names another host is refused (HTTP 421 /
  websocket 403). A page on ``evil.example`` that rebinds its name to 127.0.0.1 still sends
  ``Host: evil.example``.
- **Origin** of a websocket handshake: refused (closed with 1008, which the client sees as
  HTTP 403) unless it is this server's own scheme and ``host:port``; a handshake without
  ``Origin`` (a non-browser client) is accepted.
- **Origin** of every state-changing HTTP request (any method but GET, HEAD, OPTIONS): a
  foreign ``Origin`` (or ``Sec-Fetch-Site: cross-site`` without one) gets 403, so a form on
  another site cannot drive this one.

Depends on nothing but the standard library.
"""

from __future__ import annotations

import ipaddress
import json
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


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: names a loopback server always answers to ("testserver": Starlette's TestClient; a
#: single label no public DNS name can be)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "testserver"})


def allowed_hosts(bound: str, extra: list[str] | tuple[str, ...] = ()) -> frozenset[str] | None:
    """The ``Host`` names a server bound to ``bound`` answers to; None: any (a server bound
    beyond loopback without a list of names: its token guards control and the host view)."""
    names = {h.strip().lower().strip("[]") for h in extra if h.strip()}
    if is_loopback(bound):
        return frozenset(names | LOOPBACK_NAMES | {bound.lower().strip("[]")})
    if names:
        return frozenset(names | {bound.lower().strip("[]")})
    return None


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (``[::1]`` brackets allowed)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str:
    """``Host`` without its port, lower case, IPv6 brackets dropped."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope.get("headers", [])}


def host_allowed(scope: Scope, hosts: frozenset[str] | None) -> bool:
    if hosts is None:
        return True
    host = _headers(scope).get(b"host")
    if host is None:
        return True  # HTTP/1.0 without Host: no browser sends that
    return host_name(host.decode("latin-1")) in hosts


def request_origin_allowed(scope: Scope) -> bool:
    """A state-changing HTTP request: no foreign ``Origin`` (nor a cross-site fetch)."""
    if scope.get("method", "GET") in SAFE_METHODS:
        return True
    headers = _headers(scope)
    if b"origin" not in headers:
        return headers.get(b"sec-fetch-site", b"") != b"cross-site"
    if headers[b"origin"] == b"null":
        return False
    return origin_allowed(scope)


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
    """ASGI middleware: the Host and Origin checks (see the module docstring)."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None = None):
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            if not host_allowed(scope, self.hosts):
                log.warning("websocket %s refused: unknown Host", scope.get("path"))
                await send({"type": "websocket.close", "code": 1008, "reason": "unknown host"})
                return
            if not origin_allowed(scope):
                log.warning("websocket %s refused: foreign Origin", scope.get("path"))
                await send(
                    {"type": "websocket.close", "code": 1008, "reason": "origin not allowed"}
                )
                return
        elif kind == "http":
            if not host_allowed(scope, self.hosts):
                await _refuse(send, 421, "host", "this server does not answer to that Host name")
                return
            if not request_origin_allowed(scope):
                log.warning("%s %s refused: foreign Origin", scope.get("method"), scope.get("path"))
                await _refuse(send, 403, "origin", "a request from another site is not accepted")
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, field: str, message: str) -> None:
    body = json.dumps({"detail": {"field": field, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
