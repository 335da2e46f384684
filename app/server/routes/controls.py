"""Controls of a session (and of its compare group): JSON or form-encoded bodies.

Each handler validates its body into the same command the websocket takes
(:func:`app.server.messages.command`; unknown fields are ignored, as before) and hands it to
:meth:`app.server.session.Session.control`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from .. import messages as m
from ..deps import FORM_TYPES, SessionDep, body_doc, content_type, int_or_text, read_fields
from ..errors import ApiError, translate
from ..schemas import SessionInfo
from ..security import require_control
from ..session import Session

router = APIRouter(
    prefix="/api/sessions/{session_id}",
    tags=["controls"],
    dependencies=[Depends(require_control)],
)

_INT_FIELDS = {"passes", "value"}


async def _control(
    session: Session, kind: str, fields: dict[str, Any] | None = None
) -> SessionInfo:
    """The body's fields as the command ``kind`` (the websocket's message), applied."""
    try:
        msg = m.command(kind, fields)
    except ValidationError as exc:
        raise translate(exc) from None
    await session.run_control(msg)
    return session.info()


@router.post("/play")
async def play_session(session: SessionDep) -> SessionInfo:
    return await _control(session, "play")


@router.post("/pause")
async def pause_session(session: SessionDep) -> SessionInfo:
    return await _control(session, "pause")


@router.post("/reset")
async def reset_session(session: SessionDep) -> SessionInfo:
    return await _control(session, "reset")


@router.post("/speed", openapi_extra=body_doc(m.SpeedBody))
async def set_speed(request: Request, session: SessionDep) -> SessionInfo:
    return await _control(session, "speed", await read_fields(request))


@router.post("/step", openapi_extra=body_doc(m.StepBody))
async def step_session(request: Request, session: SessionDep) -> SessionInfo:
    return await _control(session, "step", await read_fields(request))


@router.post("/back", openapi_extra=body_doc(m.BackBody))
async def step_back(request: Request, session: SessionDep) -> SessionInfo:
    return await _control(session, "back", await read_fields(request))


@router.post("/seek", openapi_extra=body_doc(m.SeekBody, required=True))
async def seek_step(request: Request, session: SessionDep) -> SessionInfo:
    return await _control(session, "seek", await read_fields(request))


@router.post("/knob", openapi_extra=body_doc(m.KnobBody, required=True))
async def write_knob(request: Request, session: SessionDep) -> SessionInfo:
    return await _control(session, "knob", await read_fields(request))


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
async def inject_op(request: Request, session: SessionDep) -> SessionInfo:
    fields = await read_fields(request)
    if isinstance(fields.get("op"), dict):
        fields = fields["op"]
    if not isinstance(fields.get("op"), str):
        raise ApiError(422, "op", "expected an op name (a string), or an object with one")
    if content_type(request) in FORM_TYPES:
        fields = form_op(fields)
    return await _control(session, "inject", {"op": fields})


def form_op(fields: dict[str, Any]) -> dict[str, Any]:
    """A scenario op from form text: integers where the op takes them, page lists split."""
    op = dict(fields)
    for key in _INT_FIELDS:
        value = op.get(key)
        if isinstance(value, str):
            op[key] = int_or_text(value)
    pages = op.get("pages")
    if isinstance(pages, str):
        parts = [p.strip() for p in pages.split(",") if p.strip()]
        items: list[Any] = [int_or_text(p) for p in parts]
        op["pages"] = items[0] if len(items) == 1 else items
    return op
