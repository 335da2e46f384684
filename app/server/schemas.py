"""REST request and response bodies (the websocket messages are in ``messages``).

The control routes' bodies (``StepBody``, ``BackBody``, ``SeekBody``, ``SpeedBody``,
``KnobBody``) are the fields of the websocket commands and live with them in
:mod:`app.server.messages`; they are re-exported here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .messages import BackBody, KnobBody, SeekBody, SpeedBody, StepBody

__all__ = [
    "BackBody",
    "BranchInfo",
    "CompareInfo",
    "CreateCompare",
    "CreateSession",
    "Health",
    "Kernel",
    "KnobBody",
    "SeekBody",
    "SessionInfo",
    "SpeedBody",
    "StepBody",
]

Kernel = Literal["6.18", "6.12", "6.5", "6.1"]


class SessionInfo(BaseModel):
    id: str
    name: str
    kernel: str
    preset: str | None
    group: str | None = Field(description="compare group id, if the session is in one")
    step: int
    head: int = Field(description="last computed step of the current branch")
    branch: int
    branches: int
    playing: bool
    speed: float = Field(description="batches per second while playing")
    realtime: bool
    at_end: bool
    pages: int
    viewers: int
    summary: str = Field(description='the "what just happened" line of the current step')
    skipped_knobs: list[str] = Field(
        default_factory=list,
        description="knobs of the scenario's sysfs this kernel lacks, skipped as the replayer "
        "skips them (scenario-format.md); names cut to 64 characters, at most 16",
    )


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str | None = None
    scenario: dict[str, Any] | None = None
    kernel: Kernel | None = None
    knobs: dict[str, int | str] = Field(default_factory=dict)


def _default_pair() -> list[Kernel]:
    return ["6.5", "6.18"]


class CreateCompare(CreateSession):
    kernels: list[Kernel] = Field(default_factory=_default_pair, min_length=2, max_length=2)


class CompareInfo(BaseModel):
    group: str
    sessions: list[SessionInfo]


class BranchInfo(BaseModel):
    id: int
    parent: int | None
    base_step: int
    head: int


class Health(BaseModel):
    status: str
    sessions: int
