"""Exports: the session's ``ksm-trace/1`` trace, a CSV of every counter per step, the time
account per step (``times``), and what a shared link needs to rebuild a step (``share``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from .. import share
from ..deps import ManagerDep, SessionDep

router = APIRouter(prefix="/api/sessions/{session_id}", tags=["exports"])


@router.get("/trace")
async def export_trace(session: SessionDep) -> dict[str, Any]:
    return session.trace()


@router.get("/counters.csv", response_class=PlainTextResponse)
async def export_counters(session: SessionDep) -> PlainTextResponse:
    return PlainTextResponse(
        session.counters_csv(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{session.id}-counters.csv"'},
    )


@router.get("/times")
async def export_times(session: SessionDep) -> dict[str, Any]:
    """The running time account of every step of the branch up to the viewed one (what the
    charts' simulated-time axis needs after a jump): ``time_ns`` and ``cpu_ns`` by step,
    ``batches`` charged (``sim.timemodel``, as each step's ``story`` carries them)."""
    session.check_idle()
    t = session.timeline
    rows = t.branch.times[: t.step + 1]
    return {
        "step": t.step,
        "time_ns": [r[0] for r in rows],
        "cpu_ns": [r[1] for r in rows],
        "batches": [r[2] for r in rows],
    }


@router.get("/share")
async def share_actions(
    session: SessionDep, manager: ManagerDep, step: int | None = None
) -> dict[str, Any]:
    """What a link to ``step`` (default: the current one) of the session's branch needs:
    ``r``, the session's stored recipe (``/session?r=...&step=...`` rebuilds it anywhere
    this server's data directory is), and, for older links, ``do`` beyond preset, kernel,
    knobs and step (``app.server.share``; null when plain steps do)."""
    session.check_idle()
    t = session.timeline
    at = t.step if step is None else max(0, min(step, t.head))
    key = (id(t.branch), t.branch.id, at)
    if session.do_cache is None or session.do_cache[0] != key:
        session.do_cache = (key, share.encode(t.branch.actions[:at]))
    return {
        "step": at,
        "branch": t.branch.id,
        "r": manager.record(session),
        "do": session.do_cache[1],
    }
