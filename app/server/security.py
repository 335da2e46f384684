"""Access control: the presenter's token, read-only viewers and the websocket Origin check.

By default the server binds 127.0.0.1 and needs no token. When it binds another address,
``Settings.token`` (``KSMLAB_TOKEN``) is required for control (:func:`ensure_token` generates
one when unset); anyone else may watch read-only: GET pages, snapshots and websocket streams.

- The token is accepted as the ``token`` query parameter (the presenter's link), an
  ``Authorization: Bearer`` header, or the ``ksmlab_token`` cookie that :class:`TokenCookie`
  sets (HttpOnly, SameSite=Strict) on the first request that carries it in the query.
- :func:`require_control` is the dependency of every state-changing REST route (401/403
  JSON); :func:`check_control` that of the htmx ``/ui/`` routes and the upload form, which
  show the refusal inline in their partial;
  the websocket handler asks :func:`is_presenter` once and refuses control messages of a
  viewer without the token with an ``error`` (the socket stays open for watching).
- :class:`~app.origin.OriginCheck` (in :mod:`app.origin`, shared with the live view) refuses
  a websocket handshake whose ``Origin`` is not this server's own ``host:port`` (absent: a
  non-browser client, accepted); re-exported here for the app factory.
- :func:`redact_access_log` keeps the token out of uvicorn's access log (the presenter's
  link carries it in the query).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from starlette.requests import HTTPConnection

from app.config import Settings
from app.origin import OriginCheck as OriginCheck  # re-exported for the app factory

from .errors import ApiError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "ksmlab_token"
log = logging.getLogger("ksmlab.server")
_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&#\s]*")


class RedactToken(logging.Filter):
    """Rewrites ``token=...`` in a log record's arguments (uvicorn's access log passes the
    request path, query included, as an argument) to ``token=[redacted]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and "token=" in a for a in args):
            record.args = tuple(
                _TOKEN_IN_QUERY.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in args
            )
        return True


def redact_access_log() -> None:
    """Install :class:`RedactToken` on ``uvicorn.access`` (once; after uvicorn configured
    its logging, which happens before the app's lifespan starts)."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactToken) for f in logger.filters):
        logger.addFilter(RedactToken())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ensure_token(settings: Settings) -> Settings:
    """``settings``, with a generated token if it binds a non-loopback address without one."""
    if settings.token or is_loopback(settings.host):
        return settings
    return settings.model_copy(update={"token": secrets.token_urlsafe(18)})


def presenter_link(settings: Settings) -> str:
    host = settings.host
    if host in ("0.0.0.0", "::"):
        host = "HOST"
    elif ":" in host:
        host = f"[{host}]"
    query = f"?token={settings.token}" if settings.token else ""
    return f"http://{host}:{settings.port}/{query}"


def _bearer(conn: HTTPConnection) -> str | None:
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _candidates(conn: HTTPConnection) -> list[str]:
    found = (conn.query_params.get("token"), _bearer(conn), conn.cookies.get(COOKIE))
    return [c for c in found if c]


def _matches(candidate: str, token: str) -> bool:
    return secrets.compare_digest(candidate.encode(), token.encode())


def is_presenter(settings: Settings, conn: HTTPConnection) -> bool:
    """May this request or websocket control sessions?"""
    if not settings.token:
        return True
    return any(_matches(c, settings.token) for c in _candidates(conn))


def control_refusal(settings: Settings, conn: HTTPConnection) -> ApiError | None:
    """None if ``conn`` may control; else the 401 (no token) or 403 (wrong token) to give."""
    if is_presenter(settings, conn):
        return None
    if _candidates(conn):
        return ApiError(403, "token", "wrong token: control needs the presenter's token")
    return ApiError(
        401,
        "token",
        "read-only viewer: control needs the presenter's token "
        "(?token=... link, Authorization: Bearer, or its cookie)",
    )


def require_control(request: Request) -> None:
    """Dependency of every state-changing route (see the module docstring)."""
    settings: Settings = request.app.state.settings
    refusal = control_refusal(settings, request)
    if refusal is not None:
        raise refusal


def check_control(request: Request) -> ApiError | None:
    """Dependency of the htmx ``/ui/`` control routes: the refusal to render inline in the
    partial (as any other refused control is), or None when this request may control."""
    settings: Settings = request.app.state.settings
    return control_refusal(settings, request)


class TokenCookie:
    """ASGI middleware: a response to a request carrying the right ``?token=`` sets the
    ``ksmlab_token`` cookie, so the page keeps control after its URL drops the token."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = self.settings.token
        if scope["type"] != "http" or not token:
            await self.app(scope, receive, send)
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = query.get("token", [""])[-1]
        if not given or not _matches(given, token):
            await self.app(scope, receive, send)
            return
        cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")

        async def with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"set-cookie", cookie))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_cookie)
