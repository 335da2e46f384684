"""The one place where simulator and limit errors become HTTP statuses and ``error`` messages.

:class:`ApiError` carries a status, the field at fault and a message (plus the knob and errno
of a rejected sysfs write). REST handlers let it propagate (an exception handler renders
``{"detail": {...}}``); the websocket handler turns it into an ``error`` message.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from sim import KnobError, OpError, ScenarioError, SimError, UnsupportedError

from .messages import Error
from .timeline import LimitError

MAX_MESSAGE = 400
#: a name echoed in a message or a field (a knob's) is cut to this many characters
MAX_NAME = 64


def shown_name(name: str) -> str:
    """``name`` as a message may echo it: at most :data:`MAX_NAME` characters, then "..."."""
    return name if len(name) <= MAX_NAME else name[:MAX_NAME] + "..."


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        field: str | None,
        message: str,
        *,
        knob: str | None = None,
        errno: str | None = None,
    ):
        self.status = status
        self.field = field
        if len(message) > MAX_MESSAGE:  # a message may quote what it refuses: keep it short
            message = message[:MAX_MESSAGE] + "..."
        self.message = message
        self.knob = knob
        self.errno = errno
        super().__init__(f"{field}: {message}" if field else message)

    def detail(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "message": self.message}
        if self.knob is not None:
            out.update(knob=self.knob, errno=self.errno)
        return out

    def message_model(self) -> Error:
        return Error(message=self.message, field=self.field, knob=self.knob, errno=self.errno)


def translate(exc: Exception, prefix: str = "") -> ApiError:
    """A simulator, limit or validation error as an :class:`ApiError`."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, KnobError):
        return ApiError(
            409, "knob", f"{exc.knob}: {exc.errno}: {exc.reason}", knob=exc.knob, errno=exc.errno
        )
    if isinstance(exc, ScenarioError):
        parts = [prefix] if prefix else []
        if exc.step is not None:
            parts.append(f"steps[{exc.step}]")
        if exc.field is not None:
            parts.append(exc.field)
        return ApiError(422, ".".join(parts) or None, exc.message)
    if isinstance(exc, UnsupportedError):
        return ApiError(422, prefix or "op", str(exc))
    if isinstance(exc, OpError):
        field = ".".join(p for p in (prefix, exc.field or "") if p) or None
        return ApiError(422, field, str(exc))
    if isinstance(exc, LimitError):
        status = (
            413
            if exc.field in ("pages", "max_timeline_steps", "body", "timeline_memory_mb")
            else 422
        )
        if exc.field == "max_branches":
            status = 409
        return ApiError(status, exc.field, exc.message)
    if isinstance(exc, ValidationError):
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        loc = ".".join(str(p) for p in err.get("loc", ()))
        field = ".".join(p for p in (prefix, loc) if p) or None
        return ApiError(422, field, str(err.get("msg", "invalid")))
    if isinstance(exc, SimError):
        return ApiError(422, prefix or None, str(exc))
    raise exc
