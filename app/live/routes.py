"""HTTP and websocket routes of the live view (read-only).

``router`` holds every route; the dashboard's app factory includes it, and
:func:`create_live_app` wraps it alone for ``ksmlab serve --live-only``:

- ``GET /live``: the page (``templates/live.html``, ``static/js/live.js``);
- ``GET /live/plotly.min.js``, ``GET /live/assets/{live.js,live.css}``: its scripts;
- ``GET /api/live/ksm``: one reading of every KSM sysfs file, with the derived figures;
- ``GET /api/live/procs[?all=true]``: the processes that use KSM;
- ``GET /api/live/procs/{pid}/pages?offset=&limit=``: a window of a process's page map;
- websocket ``/ws/live``: a ``sample`` every interval (protocol in :mod:`.models`).

File reads are blocking and run in the thread pool, never on the event loop.

Limits (issue 15): one :class:`Sampler` per app reads the host for every ``/ws/live``
viewer (a sample younger than a viewer's interval is shared, serialised once; at most one
read at a time, at most one per 50 ms), at most ``max_live_viewers`` websockets at once,
and once the server is bound beyond loopback, reading the host (``/api/live/*``,
``/ws/live``) needs the presenter's token (``?token=``, ``Authorization: Bearer`` or the
``ksmlab_token`` cookie), as control does.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from app.config import Settings
from app.kernel.host import ksm as host_ksm
from app.kernel.host import pagemap
from app.kernel.host.procfs import ProcessGone
from app.origin import OriginCheck, allowed_hosts, is_loopback

from . import models
from .settings import LiveSettings, get_live_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = Jinja2Templates(directory=str(REPO_ROOT / "templates"))
ASSETS = {
    "live.js": (REPO_ROOT / "static" / "js" / "live.js", "text/javascript"),
    "live.css": (REPO_ROOT / "static" / "css" / "live.css", "text/css"),
}
DEFAULT_PAGE_LIMIT = 4096

SettingsDep = Annotated[LiveSettings, Depends(get_live_settings)]
COOKIE = "ksmlab_token"
MIN_SAMPLE_AGE = 0.05


def _lab(conn: HTTPConnection) -> Settings | None:
    settings = getattr(conn.app.state, "settings", None)
    return settings if isinstance(settings, Settings) else None


def host_read_allowed(conn: HTTPConnection) -> bool:
    """May this request read the host? Always on loopback; beyond it, with the token."""
    lab = _lab(conn)
    if lab is None or not lab.token or is_loopback(lab.host):
        return True
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    given = [
        conn.query_params.get("token"),
        value.strip() if scheme.lower() == "bearer" else None,
        conn.cookies.get(COOKIE),
    ]
    want = lab.token.encode()
    return any(g and secrets.compare_digest(g.encode(), want) for g in given)


def require_host_read(request: Request) -> None:
    if not host_read_allowed(request):
        raise HTTPException(
            401,
            "reading this host needs the presenter's token "
            "(?token=... link, Authorization: Bearer, or its cookie)",
        )


HostRead = [Depends(require_host_read)]


class Sampler:
    """One reader of the host for every live viewer of an app (see the module docstring)."""

    def __init__(self) -> None:
        self.text: str | None = None
        self.taken = float("-inf")
        self.viewers = 0
        self.reads = 0
        self._pending: asyncio.Future[str] | None = None

    async def get(self, settings: LiveSettings, max_age: float) -> str:
        """A serialised ``sample`` (or ``error``) message at most ``max_age`` seconds old."""
        max_age = max(MIN_SAMPLE_AGE, max_age)
        if self.text is not None and time.monotonic() - self.taken <= max_age:
            return self.text
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._read(settings))
        return await asyncio.shield(self._pending)

    async def _read(self, settings: LiveSettings) -> str:
        try:
            try:
                message: models.SampleMessage | models.ErrorMessage = await run_in_threadpool(
                    take_sample, settings
                )
            except OSError as exc:
                message = models.ErrorMessage(detail=f"reading KSM state failed: {exc}")
            self.reads += 1
            self.text = message.model_dump_json()
            self.taken = time.monotonic()
            return self.text
        finally:
            self._pending = None


def sampler_of(conn: HTTPConnection) -> Sampler:
    state = conn.app.state
    sampler = getattr(state, "live_sampler", None)
    if sampler is None:
        sampler = Sampler()
        state.live_sampler = sampler
    return sampler


router = APIRouter(tags=["live"])


def plotly_path() -> Path:
    """The dashboard's vendored copy if present, else the one in the plotly package."""
    vendored = REPO_ROOT / "static" / "vendor" / "plotly.min.js"
    if vendored.is_file():
        return vendored
    import plotly  # type: ignore[import-untyped]  # heavy: only when the file is asked for

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def take_sample(settings: LiveSettings) -> models.SampleMessage:
    ksm = models.KsmSample.model_validate(host_ksm.read_ksm(settings.sys_root))
    procs = models.ProcTable.model_validate(host_ksm.read_procs(settings.proc_root))
    return models.SampleMessage(ksm=ksm, procs=procs)


@router.get("/live", response_class=HTMLResponse)
def read_live_page(request: Request, settings: SettingsDep) -> Response:
    return TEMPLATES.TemplateResponse(
        request,
        "live.html",
        {
            "interval": settings.live_interval,
            "max_pages": settings.live_max_pages,
            "default_limit": min(DEFAULT_PAGE_LIMIT, settings.live_max_pages),
        },
    )


@router.get("/live/plotly.min.js", include_in_schema=False)
def read_plotly() -> FileResponse:
    path = plotly_path()
    if not path.is_file():
        raise HTTPException(404, "plotly.min.js not found (is the plotly package installed?)")
    return FileResponse(
        path, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"}
    )


@router.get("/live/assets/{name}", include_in_schema=False)
def read_asset(name: str) -> FileResponse:
    if name not in ASSETS or not ASSETS[name][0].is_file():
        raise HTTPException(404, f"no asset {name!r}")
    path, media_type = ASSETS[name]
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})


@router.get("/api/live/ksm", response_model=models.KsmSample, dependencies=HostRead)
def read_ksm(settings: SettingsDep) -> models.KsmSample:
    return models.KsmSample.model_validate(host_ksm.read_ksm(settings.sys_root))


@router.get("/api/live/procs", response_model=models.ProcTable, dependencies=HostRead)
def read_procs(
    settings: SettingsDep,
    include_all: Annotated[bool, Query(alias="all")] = False,
) -> models.ProcTable:
    return models.ProcTable.model_validate(
        host_ksm.read_procs(settings.proc_root, include_all=include_all)
    )


@router.get("/api/live/procs/{pid}/pages", response_model=models.PageMap, dependencies=HostRead)
def read_proc_pages(
    pid: int,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> models.PageMap:
    if limit is None:
        limit = min(DEFAULT_PAGE_LIMIT, settings.live_max_pages)
    if limit > settings.live_max_pages:
        raise HTTPException(
            422,
            f"limit {limit} is above the maximum of "
            f"{settings.live_max_pages} pages per request; page through",
        )
    try:
        pm = pagemap.read_page_map(settings.proc_root, pid, offset, limit)
    except ProcessGone:
        raise HTTPException(404, f"process {pid} does not exist (or exited)") from None
    return models.PageMap.model_validate(pm)


# --------------------------------------------------------------------------------------
# websocket


@dataclass
class _Stream:
    interval: float
    sample_now: bool = False
    closed: bool = False
    outbox: list[models.ErrorMessage] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def _handle_client_message(stream: _Stream, text: str | None) -> None:
    if text is None:
        stream.outbox.append(models.ErrorMessage(detail="binary messages are not understood"))
        return
    try:
        data = json.loads(text)
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "interval":
            stream.interval = min(
                3600.0, max(0.05, models.IntervalRequest.model_validate(data).seconds)
            )
        elif kind == "sample":
            stream.sample_now = True
        else:
            stream.outbox.append(
                models.ErrorMessage(
                    detail=f"unknown message type {kind!r} (expected 'interval' or 'sample')"
                )
            )
    except (ValueError, ValidationError) as exc:
        stream.outbox.append(models.ErrorMessage(detail=f"bad message: {exc}"[:300]))


async def _receive(websocket: WebSocket, stream: _Stream) -> None:
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            _handle_client_message(stream, message.get("text"))
            stream.wake.set()
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        stream.closed = True
        stream.wake.set()


@router.websocket("/ws/live")
async def stream_live(websocket: WebSocket, settings: SettingsDep) -> None:
    """Send a ``sample`` now and every interval; the client's messages adjust the stream.

    The next sample is taken only after the previous one was sent, so a slow client delays
    its own samples and nothing queues up. Samples come from the app's one
    :class:`Sampler`; beyond ``max_live_viewers`` (or without the token, when one is
    needed) the socket gets an ``error`` and is closed.
    """
    await websocket.accept()
    sampler = sampler_of(websocket)
    lab = _lab(websocket)
    limit = lab.max_live_viewers if lab is not None else 64
    refusal, code = None, 1000
    if not host_read_allowed(websocket):
        refusal, code = "reading this host needs the presenter's token", 4401
    elif sampler.viewers >= limit:
        refusal, code = f"at most {limit} live viewers at once", 4429
    if refusal is not None:
        await websocket.send_text(models.ErrorMessage(detail=refusal).model_dump_json())
        await websocket.close(code)
        return
    sampler.viewers += 1
    stream = _Stream(interval=settings.live_interval)
    receiver = asyncio.create_task(_receive(websocket, stream))
    loop = asyncio.get_running_loop()
    last = float("-inf")
    try:
        while not stream.closed:
            stream.wake.clear()
            while stream.outbox:
                await websocket.send_text(stream.outbox.pop(0).model_dump_json())
            if stream.sample_now or loop.time() >= last + stream.interval:
                max_age = 0.0 if stream.sample_now else stream.interval
                stream.sample_now = False
                last = loop.time()
                await websocket.send_text(await sampler.get(settings, max_age))
            timeout = max(0.0, last + stream.interval - loop.time())
            try:
                await asyncio.wait_for(stream.wake.wait(), timeout)
            except TimeoutError:
                pass
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        sampler.viewers -= 1
        receiver.cancel()


# --------------------------------------------------------------------------------------
# stand-alone app


def create_live_app(settings: LiveSettings | None = None, lab: Settings | None = None) -> FastAPI:
    """A FastAPI app with only the live view (``ksmlab serve --live-only``).

    ``settings`` defaults to the environment (``LiveSettings()``); ``lab``: the server's
    address, token and limits (default: the environment's). ``/`` redirects to ``/live``
    and ``/healthz`` answers ``{"status": "ok"}``.
    """
    lab = lab or Settings()
    app = FastAPI(
        title="KSM Lab: live host view",
        description="Read-only view of this machine's KSM.",
        docs_url=None,  # Swagger UI loads from a CDN
        redoc_url=None,
    )
    app.state.settings = lab
    app.include_router(router)
    # Host and Origin checked as the lab's (DNS rebinding, other sites' pages)
    app.add_middleware(OriginCheck, hosts=allowed_hosts(lab.host, lab.allowed_hosts))
    if settings is not None:
        app.dependency_overrides[get_live_settings] = lambda: settings

    @app.get("/", include_in_schema=False)
    def redirect_to_live() -> RedirectResponse:
        return RedirectResponse("/live")

    @app.get("/healthz", include_in_schema=False)
    def read_health() -> dict[str, str]:
        return {"status": "ok"}

    return app
