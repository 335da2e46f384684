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
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from app.kernel.host import ksm as host_ksm
from app.kernel.host import pagemap
from app.kernel.host.procfs import ProcessGone
from app.origin import OriginCheck

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


@router.get("/api/live/ksm", response_model=models.KsmSample)
def read_ksm(settings: SettingsDep) -> models.KsmSample:
    return models.KsmSample.model_validate(host_ksm.read_ksm(settings.sys_root))


@router.get("/api/live/procs", response_model=models.ProcTable)
def read_procs(
    settings: SettingsDep,
    include_all: Annotated[bool, Query(alias="all")] = False,
) -> models.ProcTable:
    return models.ProcTable.model_validate(
        host_ksm.read_procs(settings.proc_root, include_all=include_all)
    )


@router.get("/api/live/procs/{pid}/pages", response_model=models.PageMap)
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
    its own samples and nothing queues up.
    """
    await websocket.accept()
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
                stream.sample_now = False
                last = loop.time()
                try:
                    message: models.SampleMessage | models.ErrorMessage = await run_in_threadpool(
                        take_sample, settings
                    )
                except OSError as exc:
                    message = models.ErrorMessage(detail=f"reading KSM state failed: {exc}")
                await websocket.send_text(message.model_dump_json())
            timeout = max(0.0, last + stream.interval - loop.time())
            try:
                await asyncio.wait_for(stream.wake.wait(), timeout)
            except TimeoutError:
                pass
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        receiver.cancel()


# --------------------------------------------------------------------------------------
# stand-alone app


def create_live_app(settings: LiveSettings | None = None) -> FastAPI:
    """A FastAPI app with only the live view (``ksmlab serve --live-only``).

    ``settings`` defaults to the environment (``LiveSettings()``); ``/`` redirects to
    ``/live`` and ``/healthz`` answers ``{"status": "ok"}``.
    """
    app = FastAPI(
        title="KSM Lab: live host view", description="Read-only view of this machine's KSM."
    )
    app.include_router(router)
    app.add_middleware(OriginCheck)  # the websocket refuses other sites' pages, as the lab's
    if settings is not None:
        app.dependency_overrides[get_live_settings] = lambda: settings

    @app.get("/", include_in_schema=False)
    def redirect_to_live() -> RedirectResponse:
        return RedirectResponse("/live")

    @app.get("/healthz", include_in_schema=False)
    def read_health() -> dict[str, str]:
        return {"status": "ok"}

    return app
