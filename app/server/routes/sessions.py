"""Sessions: create (preset or uploaded JSON/YAML scenario), list, get, delete, fork, views."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.datastructures import UploadFile

from ..deps import (
    ManagerDep,
    SessionDep,
    SettingsDep,
    body_doc,
    content_type,
    int_or_text,
    read_fields,
    validate,
)
from ..schemas import BranchInfo, CompareInfo, CreateCompare, CreateSession, SessionInfo
from ..security import require_control
from ..sources import YAML_TYPES, decode_document_async, resolve

router = APIRouter(prefix="/api", tags=["sessions"])

#: state-changing routes need the presenter's token (when the server has one)
CONTROL = [Depends(require_control)]
KernelQuery = Annotated[str | None, Query(description="kernel profile for a raw scenario body")]


async def creation_input(
    request: Request, kernel: str | None, compare: bool = False
) -> CreateSession:
    """The create body, whatever its form: JSON fields, a raw JSON/YAML scenario, or a form."""
    model = CreateCompare if compare else CreateSession
    ctype = content_type(request)
    if ctype in YAML_TYPES:
        doc = await decode_document_async(await request.body(), yaml_ok=True)
        return validate(model, {"scenario": doc, "kernel": kernel})
    fields = await read_fields(request)
    if isinstance(fields.get("steps"), list):  # the body is a scenario document
        return validate(model, {"scenario": fields, "kernel": kernel})
    data: dict[str, Any] = {}
    knobs: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, UploadFile):
            name = (value.filename or "").lower()
            raw = await value.read()
            yaml_ok = name.endswith((".yaml", ".yml"))
            data[key] = await decode_document_async(raw, yaml_ok, field=key)
        elif key.startswith("knob.") and isinstance(value, str):
            knobs[key[5:]] = int_or_text(value)
        elif key == "kernels" and isinstance(value, str):
            data[key] = [v.strip() for v in value.split(",") if v.strip()]
        else:
            data[key] = value
    if knobs:
        data["knobs"] = {**data.get("knobs", {}), **knobs}
    if kernel is not None and "kernel" not in data:
        data["kernel"] = kernel
    return validate(model, data)


@router.post(
    "/sessions",
    status_code=201,
    openapi_extra=body_doc(CreateSession, required=True),
    dependencies=CONTROL,
)
async def create_session(
    request: Request, manager: ManagerDep, settings: SettingsDep, kernel: KernelQuery = None
) -> SessionInfo:
    body = await creation_input(request, kernel)
    scenario = resolve(settings, body.preset, body.scenario, body.kernel, body.knobs)
    return manager.create(scenario, body.preset).info()


@router.post(
    "/compare",
    status_code=201,
    tags=["compare"],
    openapi_extra=body_doc(CreateCompare, required=True),
    dependencies=CONTROL,
)
async def create_compare(
    request: Request, manager: ManagerDep, settings: SettingsDep, kernel: KernelQuery = None
) -> CompareInfo:
    body = await creation_input(request, kernel, compare=True)
    assert isinstance(body, CreateCompare)
    scenario = resolve(settings, body.preset, body.scenario, body.kernel, body.knobs)
    group = manager.create_compare(scenario, list(body.kernels), body.preset)
    return CompareInfo(group=group.id, sessions=[s.info() for s in group.sessions])


@router.get("/sessions")
async def list_sessions(manager: ManagerDep) -> list[SessionInfo]:
    return [s.info() for s in manager.list_sessions()]


@router.get("/sessions/{session_id}")
async def read_session(session: SessionDep) -> SessionInfo:
    return session.info()


@router.delete("/sessions/{session_id}", status_code=204, dependencies=CONTROL)
async def delete_session(session: SessionDep, manager: ManagerDep) -> Response:
    manager.delete(session.id)
    return Response(status_code=204)


@router.post("/sessions/{session_id}/fork", status_code=201, dependencies=CONTROL)
async def fork_session(
    session: SessionDep, manager: ManagerDep, step: Annotated[int | None, Query(ge=0)] = None
) -> SessionInfo:
    at = session.timeline.step if step is None else step
    return manager.fork(session, at).info()


@router.get("/sessions/{session_id}/branches")
async def list_branches(session: SessionDep) -> list[BranchInfo]:
    return [BranchInfo(**b.info()) for b in session.timeline.branches]


@router.get("/sessions/{session_id}/snapshot")
async def read_snapshot(session: SessionDep) -> Response:
    """The websocket's ``snapshot`` message for the current step."""
    await session.ensure_snapshot()
    return Response(session.snapshot_text(), media_type="application/json")


@router.get("/sessions/{session_id}/state")
async def read_state(session: SessionDep) -> dict[str, Any]:
    return session.state_view()


@router.get("/sessions/{session_id}/pages/{proc}/{vma}/{page}")
async def read_page(session: SessionDep, proc: str, vma: str, page: int) -> dict[str, Any]:
    return session.page_detail(proc, vma, page)


@router.get("/sessions/{session_id}/viewers")
async def list_viewers(session: SessionDep) -> list[dict[str, int]]:
    return [v.stats() for v in session.viewers]
