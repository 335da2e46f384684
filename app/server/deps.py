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
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(422, "body", f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "body", "expected a JSON object")
    return data


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
