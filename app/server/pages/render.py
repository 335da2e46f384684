"""What every page and partial shares: the templates, their base context, the lookups.

:func:`render` renders a template of ``templates/`` with the base context (kernels, legend,
the presenter's ``token`` query); :func:`session_context` is what the session templates and
their partials show of a session; :func:`error_page` is the index page with an error.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from sim.ksm_files import KNOB_DEFAULTS
from sim.presets import UnknownPresetError, list_presets, preset_info
from sim.profiles import Profile, get_profile
from sim.scenario import KERNELS
from sim.snapshot import PAGE_KINDS

from ..deps import get_manager
from ..errors import ApiError
from ..security import check_control
from ..session import Session
from ..sessions import SessionManager

#: the ``/ui/`` control routes and uploads need the presenter's token (when the server has
#: one); a refusal is shown inline in the partial, like any refused control
RefusalDep = Annotated[ApiError | None, Depends(check_control)]
ManagerDep = Annotated[SessionManager, Depends(get_manager)]

#: speed slider stops, batches per second
SPEEDS = (0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 250.0, 500.0, 1000.0)

#: the grid's legend: every page kind and its label (``sim.snapshot.PAGE_KINDS``)
LEGEND = tuple((row.name, row.label) for row in PAGE_KINDS)
KIND_LABELS = dict(LEGEND)
KIND_MEANINGS = {row.name: row.meaning for row in PAGE_KINDS}


def kernel_note(profile: Profile) -> str:
    """One line on what sets this kernel apart, from its capabilities."""
    if profile.zero_page_series:
        return "zero-page series (6.6+): a KSM-placed zero page has a dirty PTE and is counted"
    if profile.has_prctl:
        return "before the zero-page series: KSM's zero pages look like read faults, uncounted"
    lacks = [
        what
        for has, what in (
            (profile.has_prctl, "no prctl"),
            (profile.smart_scan, "no smart scan"),
            (profile.has_profit, "no profit counters"),
        )
        if not has
    ]
    return "before the zero-page series; " + ", ".join(lacks)


KERNEL_NOTES = {version: kernel_note(get_profile(version)) for version in KERNELS}
#: the kernels whose badge is drawn as old: before the zero-page series
OLD_KERNELS = frozenset(v for v in KERNELS if not get_profile(v).zero_page_series)

#: the knobs the upload form suggests, with their defaults (``sim.ksm_files``)
KNOB_HINTS = tuple(
    (name, str(KNOB_DEFAULTS[name]))
    for name in (
        "use_zero_pages",
        "pages_to_scan",
        "sleep_millisecs",
        "max_page_sharing",
        "smart_scan",
        "merge_across_nodes",
    )
)

#: HTML page responses carry no htmx-only markup; partials go to htmx requests
HTMX = "hx-request"


@lru_cache
def _templates(directory: str) -> Jinja2Templates:
    return Jinja2Templates(directory=directory)


def templates(manager: SessionManager) -> Jinja2Templates:
    return _templates(str(Path(manager.settings.templates_dir)))


def render(
    manager: SessionManager, request: Request, name: str, status: int = 200, **context: Any
) -> HTMLResponse:
    base: dict[str, Any] = {
        "kernels": KERNELS,
        "legend": LEGEND,
        "meanings": KIND_MEANINGS,
        "kind_labels": KIND_LABELS,
        "kernel_notes": KERNEL_NOTES,
        "old_kernels": OLD_KERNELS,
        "token_qs": token_qs(request),
        "presenter": request.query_params.get("presenter") == "1",
    }
    base.update(context)
    return templates(manager).TemplateResponse(request, name, base, status_code=status)


def token_qs(request: Request) -> str:
    token = request.query_params.get("token")
    return "?" + urlencode({"token": token}) if token else ""


def error_dict(exc: ApiError) -> dict[str, Any]:
    return exc.detail()


def story(manager: SessionManager, session: Session) -> tuple[str, str]:
    """The title and description shown for a session."""
    if session.preset:
        try:
            info = preset_info(session.preset, manager.settings.presets_dir)
            return info.title, info.description
        except UnknownPresetError:
            pass
    return session.scenario.name, session.scenario.description


def find(manager: SessionManager, sid: str | None) -> Session | None:
    if not sid:
        return None
    try:
        return manager.get(sid)
    except ApiError:
        return None


def error_page(manager: SessionManager, request: Request, exc: ApiError) -> HTMLResponse:
    return render(
        manager,
        request,
        "index.html",
        status=exc.status,
        presets=list_presets(manager.settings.presets_dir),
        knob_hints=KNOB_HINTS,
        page_error=error_dict(exc),
    )


def session_context(session: Session, **extra: Any) -> dict[str, Any]:
    info = session.info()
    speed = min(range(len(SPEEDS)), key=lambda i: abs(SPEEDS[i] - info.speed))
    label = "real time" if info.realtime else f"{SPEEDS[speed]:g} batches/s"
    ctx: dict[str, Any] = {
        "s": info,
        "speeds": SPEEDS,
        "speed_index": speed,
        "speed_label": label,
        "knobs": dict(session.kernel.knobs),
        "kernel_knobs": dict(session.kernel.knobs),
        "branch_list": [b.info() for b in session.timeline.branches],
        "form": {},
        "sel_text": "",
    }
    ctx.update(extra)
    return ctx
