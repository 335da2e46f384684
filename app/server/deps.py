"""FastAPI dependencies as ``Annotated`` aliases, and the JSON-or-form body reader."""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from app.config import Settings, get_settings

from .errors import ApiError, translate
from .sessions import Session, SessionManager

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
JSON_TYPE = "application/json"
#: digits of an integer field given as text (longer: kept as text, refused by validation)
MAX_INT_DIGITS = 20
M = TypeVar("M", bound=BaseModel)


def get_manager(request: Request) -> SessionManager:
    manager: SessionManager = request.app.state.manager
    return manager


def get_session(
    session_id: str, manager: Annotated[SessionManager, Depends(get_manager)]
) -> Session:
    return manager.get(session_id)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[SessionManager, Depends(get_manager)]
SessionDep = Annotated[Session, Depends(get_session)]


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_fields(request: Request) -> dict[str, Any]:
    """The body as a dict: JSON object, or form fields (files as UploadFile); {} if empty."""
    ctype = content_type(request)
    if ctype in FORM_TYPES:
        form = await request.form()
        out: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile) or value != "":
                out[key] = value
        return out
    raw = await request.body()
    if not raw.strip():
        return {}
    if ctype != JSON_TYPE:  # text/plain is what a cross-site form can send without asking
        raise ApiError(
            415, "body", f"send JSON as {JSON_TYPE} (or a form); got {ctype or 'no type'!r}"
        )
    return parse_json_object(raw)


def parse_json_object(raw: bytes | str, field: str = "body") -> dict[str, Any]:
    """A JSON object, or a 422 naming ``field`` (too deep, an integer of over 4,300
    digits and plain syntax errors alike; the message is short)."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ApiError(422, field, "invalid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, field, f"invalid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise ApiError(422, field, "expected a JSON object")
    return data


def int_or_text(value: str) -> int | str:
    """Form text as an integer when it is one of at most :data:`MAX_INT_DIGITS` digits."""
    v = value.strip()
    if len(v) <= MAX_INT_DIGITS and v.lstrip("-").isdigit():
        return int(v)
    return v


def validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise translate(exc) from None


def body_doc(
    model: type[BaseModel] | None = None,
    schema: dict[str, Any] | None = None,
    required: bool = False,
) -> dict[str, Any]:
    """``openapi_extra`` documenting a body that may be JSON or form-encoded."""
    sch = schema if schema is not None else (model.model_json_schema() if model else {})
    content = {
        "application/json": {"schema": sch},
        "application/x-www-form-urlencoded": {"schema": sch},
    }
    return {"requestBody": {"required": required, "content": content}}
