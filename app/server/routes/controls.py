"""Controls of a session (and of its compare group): JSON or form-encoded bodies.

Each handler builds the same client message the websocket takes and hands it to
:meth:`app.server.sessions.SessionManager.control`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from .. import messages as m
from ..deps import ManagerDep, SessionDep, body_doc, read_fields, validate
from ..errors import ApiError
from ..schemas import BackBody, KnobBody, SeekBody, SessionInfo, SpeedBody, StepBody
from ..security import require_control

router = APIRouter(
    prefix="/api/sessions/{session_id}",
    tags=["controls"],
    dependencies=[Depends(require_control)],
)

_INT_FIELDS = {"passes", "value"}


def _control(manager: ManagerDep, session: SessionDep, msg: Any) -> SessionInfo:
    manager.control(session, msg)
    return session.info()


@router.post("/play")
async def play_session(session: SessionDep, manager: ManagerDep) -> SessionInfo:
    return _control(manager, session, m.PlayMsg(type="play"))


@router.post("/pause")
async def pause_session(session: SessionDep, manager: ManagerDep) -> SessionInfo:
    return _control(manager, session, m.PauseMsg(type="pause"))


@router.post("/reset")
async def reset_session(session: SessionDep, manager: ManagerDep) -> SessionInfo:
    return _control(manager, session, m.ResetMsg(type="reset"))


@router.post("/speed", openapi_extra=body_doc(SpeedBody))
async def set_speed(request: Request, session: SessionDep, manager: ManagerDep) -> SessionInfo:
    body = validate(SpeedBody, await read_fields(request))
    return _control(manager, session, m.SpeedMsg(type="speed", **body.model_dump()))


@router.post("/step", openapi_extra=body_doc(StepBody))
async def step_session(request: Request, session: SessionDep, manager: ManagerDep) -> SessionInfo:
    body = validate(StepBody, await read_fields(request))
    return _control(manager, session, m.StepMsg(type="step", **body.model_dump()))


@router.post("/back", openapi_extra=body_doc(BackBody))
async def step_back(request: Request, session: SessionDep, manager: ManagerDep) -> SessionInfo:
    body = validate(BackBody, await read_fields(request))
    return _control(manager, session, m.BackMsg(type="back", **body.model_dump()))


@router.post("/seek", openapi_extra=body_doc(SeekBody, required=True))
async def seek_step(request: Request, session: SessionDep, manager: ManagerDep) -> SessionInfo:
    body = validate(SeekBody, await read_fields(request))
    return _control(manager, session, m.SeekMsg(type="seek", **body.model_dump()))


@router.post("/knob", openapi_extra=body_doc(KnobBody, required=True))
async def write_knob(request: Request, session: SessionDep, manager: ManagerDep) -> SessionInfo:
    body = validate(KnobBody, await read_fields(request))
    return _control(manager, session, m.KnobMsg(type="knob", **body.model_dump()))


_OP_SCHEMA = {
    "type": "object",
    "required": ["op"],
    "properties": {
        "op": {"type": "string"},
        "proc": {"type": "string"},
        "child": {"type": "string"},
        "vma": {"type": "string"},
        "pages": {},
        "content": {"type": "string"},
        "advice": {"type": "string"},
        "value": {},
        "knob": {"type": "string"},
        "passes": {"type": "integer"},
        "name": {"type": "string"},
    },
}


@router.post("/inject", openapi_extra=body_doc(schema=_OP_SCHEMA, required=True))
async def inject_op(request: Request, session: SessionDep, manager: ManagerDep) -> SessionInfo:
    fields = await read_fields(request)
    if isinstance(fields.get("op"), dict):
        fields = fields["op"]
    elif not isinstance(fields.get("op"), str):
        raise ApiError(422, "op", "missing")
    from ..deps import FORM_TYPES, content_type

    if content_type(request) in FORM_TYPES:
        fields = form_op(fields)
    return _control(manager, session, m.InjectMsg(type="inject", op=fields))


def form_op(fields: dict[str, Any]) -> dict[str, Any]:
    """A scenario op from form text: integers where the op takes them, page lists split."""
    op = dict(fields)
    for key in _INT_FIELDS:
        value = op.get(key)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            op[key] = int(value)
    pages = op.get("pages")
    if isinstance(pages, str):
        parts = [p.strip() for p in pages.split(",") if p.strip()]
        items: list[Any] = [int(p) if p.isdigit() else p for p in parts]
        op["pages"] = items[0] if len(items) == 1 else items
    return op
