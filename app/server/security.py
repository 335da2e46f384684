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
- :func:`redact_access_log` keeps the token out of every log line (the presenter's link
  carries it in the query; websocket lines too; escaped or not).
- :class:`SecurityHeaders`: CSP, framing, nosniff and caching headers.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, unquote

from fastapi import Request
from starlette.requests import HTTPConnection

from app.config import Settings
from app.origin import OriginCheck as OriginCheck  # re-exported for the app factory
from app.origin import is_loopback as is_loopback  # re-exported for the CLI

from .errors import ApiError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "ksmlab_token"
log = logging.getLogger("ksmlab.server")


_TOKEN_ANY = re.compile(r"(?i)((?:^|[?&;\s\"'])[\w-]*token=)[^&#\s\"';]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',]+")
_SECRETS: set[str] = set()


def redact(text: str) -> str:
    """``text`` with every token removed: ``token=...`` in a query or a cookie (escaped or
    not: ``?%74oken=`` is decoded first), ``Bearer ...``, and the configured token itself
    wherever it appears."""
    out = text
    if "%" in out:
        decoded = unquote(out)
        if decoded != out and (_TOKEN_ANY.search(decoded) or any(t in decoded for t in _SECRETS)):
            out = decoded
    out = _TOKEN_ANY.sub(r"\1[redacted]", out)
    out = _BEARER.sub(r"\1[redacted]", out)
    for secret in _SECRETS:
        out = out.replace(secret, "[redacted]")
    return out


class RedactToken(logging.Filter):
    """Rewrites a record whose message holds a token (see :func:`redact`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: leave it to logging's own error report
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None


_factory_installed = False


def redact_access_log(token: str | None = None) -> None:
    """Keep tokens out of every log line, at every level: a log-record factory redacts each
    record as it is made (so whatever handler, logger or level), and :class:`RedactToken`
    sits on uvicorn's loggers and the root handlers as well (records made before)."""
    global _factory_installed
    if token:
        _SECRETS.add(token)
    if not _factory_installed:
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error", "ksmlab", ""):
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            if not any(isinstance(f, RedactToken) for f in target.filters):
                target.addFilter(RedactToken())


#: Content-Security-Policy of the HTML pages: scripts and everything else from this server
#: only (Plotly and htmx set inline styles); no framing anywhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """ASGI middleware: ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and
    ``Referrer-Policy: same-origin`` on every response; the CSP on HTML; caching: HTML and
    the API ``no-store`` (state changes with every step), ``/static`` revalidated
    (``no-cache``) unless the route chose otherwise."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                ]
                if ctype.startswith(b"text/html"):
                    headers.append((b"content-security-policy", CSP.encode()))
                if b"cache-control" not in names:
                    static = path.startswith(("/static/", "/live/assets/"))
                    headers.append((b"cache-control", b"no-cache" if static else b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


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
