"""The FastAPI application: ``create_app(settings)``.

Routers: health and presets, sessions (and compare), controls, exports, the websocket; the
HTML pages router ``app.server.pages.router`` and the live view ``app.live.routes.router``
when those modules exist. Static files from ``static/``; ``/static/vendor/plotly.min.js``
from the installed plotly package and ``/static/vendor/htmx.min.js`` from ``static/node_modules``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from app.config import Settings, get_settings
from app.live import routes as live_routes
from app.origin import allowed_hosts

from . import pages
from .errors import ApiError
from .routes import controls, exports, health, sessions, ws
from .security import (
    OriginCheck,
    SecurityHeaders,
    TokenCookie,
    ensure_token,
    presenter_link,
    redact_access_log,
)
from .sessions import SessionManager

log = logging.getLogger("ksmlab.server")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def plotly_js() -> Path:
    import plotly  # type: ignore[import-untyped]

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def htmx_js(settings: Settings) -> Path:
    return settings.static_dir / "node_modules" / "htmx.org" / "dist" / "htmx.min.js"


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._reject(send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        response = JSONResponse(
            {"detail": {"field": "body", "message": f"request body over {self.limit} bytes"}},
            status_code=413,
        )
        await response({"type": "http"}, _no_receive, send)


class WsProtocolCapture:
    """ASGI middleware: keep the server's websocket protocol object in the scope, for the
    broadcast fast path (:mod:`app.server.fastsend`)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope["ksmlab.ws_protocol"] = getattr(send, "__self__", None)
        await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


async def _no_receive() -> Message:  # pragma: no cover - a response never reads
    return {"type": "http.disconnect"}


def create_app(settings: Settings | None = None) -> FastAPI:
    given = settings or get_settings()
    settings = ensure_token(given)
    if settings.token != given.token:
        log.warning(
            "bound to %s: control needs the token; presenter: %s",
            settings.host,
            presenter_link(settings),
        )
    manager = SessionManager(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redact_access_log(settings.token)
        manager.start()
        yield
        await manager.stop()

    redact_access_log(settings.token)
    app = FastAPI(
        title="KSM Lab",
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: off; /openapi.json stays
        redoc_url=None,
        version="0.1.0",
        lifespan=lifespan,
        description="Linux KSM, simulated: sessions, timelines and live page grids. "
        "Websocket protocol: docs/protocol.md.",
    )
    app.state.settings = settings
    app.state.manager = manager
    app.dependency_overrides[get_settings] = lambda: settings

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail()}, status_code=exc.status)

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    async def vendor_plotly() -> FileResponse:
        return FileResponse(plotly_js(), media_type="text/javascript")

    @app.get("/static/vendor/htmx.min.js", include_in_schema=False)
    async def vendor_htmx() -> FileResponse:
        path = htmx_js(settings)
        if not path.is_file():
            raise ApiError(404, "htmx", "run `npm ci --prefix static` to install htmx")
        return FileResponse(path, media_type="text/javascript")

    routers = (health, sessions, controls, exports, ws, pages, live_routes)
    for module in routers:
        app.include_router(module.router)
    if settings.static_dir.is_dir():
        app.mount("/static", StaticFiles(directory=settings.static_dir), name="static")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(WsProtocolCapture)
    app.add_middleware(TokenCookie, settings=settings)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(OriginCheck, hosts=allowed_hosts(settings.host, settings.allowed_hosts))
    return app
