"""Exports: the session's ``ksm-trace/1`` trace and a CSV of every counter per step."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from ..deps import SessionDep

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
