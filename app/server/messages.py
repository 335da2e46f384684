"""Websocket messages: every frame is one of these pydantic models, tagged by ``type``.

Server to client: :class:`Snapshot`, :class:`Delta`, :class:`State`, :class:`End`,
:class:`Error`. Client to server: :data:`ClientMessage`, parsed by
:func:`parse_client_message`: a :data:`Command` (``step``, ``back``, ``seek``, ``play``,
``pause``, ``speed``, ``reset``, ``inject``, ``knob``), or ``ack``, a viewer's report of the
last step it drew. The commands are the one command model of the dashboard: the REST control
routes and the HTML forms build them with :func:`command` (their bodies are the same models
without ``type``: ``StepBody``, ...), shared links with the ``*Msg`` classes.
``docs/protocol.md`` explains each field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, TypeAdapter, field_validator

Event = tuple[str, str | None, str | None, int | None]
"""``[kind, proc, vma, page]`` (proc/vma/page null for a global event)."""

StableNodeRow = tuple[int, str, int, int, int]
"""``[nid, kind, pfn, rmap_hlist_len, chain nid or -1]``."""


class _Step(BaseModel):
    """Fields shared by ``snapshot`` and ``delta``."""

    session: str
    step: int
    head: int
    branch: int
    ts: float = Field(description="server clock at the step, ms since the epoch")
    summary: str = ""
    events: list[Event] = Field(default_factory=list)
    event_counts: dict[str, int] = Field(default_factory=dict)
    what: dict[str, Any] = Field(default_factory=dict, description="the step as data")
    story: dict[str, int] = Field(
        default_factory=dict,
        description="where the scenario is: pos (scenario steps done) and steps (their number)",
    )


class VmaView(BaseModel):
    name: str
    uid: int
    start: int
    npages: int
    mergeable: list[tuple[int, int]]
    pfn: str = Field(description="b64 int32 LE per page")
    pte: str = Field(description="b64 u8 PTE flags per page")
    kind: str = Field(description="b64 u8 page kind per page")
    item: str = Field(description="b64 u8 rmap_item state per page")


class ProcView(BaseModel):
    name: str
    pid: int
    registered: bool
    merge_any: bool
    ksm_stat: dict[str, int | bool | None]
    vmas: list[VmaView]


class FramesView(BaseModel):
    count: int
    kind: str
    mapcount: str


class FrameRecords(BaseModel):
    count: int
    n: int
    d: str


class OverviewLane(BaseModel):
    """One mapping's buckets: ``n`` bucket records (``docs/protocol.md``, the overview)."""

    uid: int
    n: int
    d: str = Field(description="b64 bucket records")


class DetailView(BaseModel):
    """Per-page columns of pages ``[lo, hi)`` of one mapping (a viewport's detail range)."""

    uid: int
    lo: int
    hi: int
    pfn: str
    pte: str
    kind: str
    item: str


class OverviewView(BaseModel):
    bucket: int = Field(description="pages per bucket")
    lanes: list[OverviewLane]
    detail: list[DetailView]
    ksm_frames: FrameRecords = Field(description="the zero page and every KSM page's frame")


class OverviewDelta(BaseModel):
    bucket: int
    lanes: list[OverviewLane] = Field(description="only the buckets that changed")


class Snapshot(_Step):
    type: Literal["snapshot"] = "snapshot"
    kernel: str
    knobs: dict[str, Any]
    global_: dict[str, int | None] = Field(
        validation_alias=AliasChoices("global", "global_"), serialization_alias="global"
    )
    procs: list[ProcView]
    frames: FramesView
    stable_nodes: list[StableNodeRow]
    ksmd: dict[str, Any]
    unstable_tree: int
    kinds: list[str]
    paths: dict[str, str]
    ksm_files: list[dict[str, Any]] = Field(default_factory=list)
    kind_table: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    marks: list[dict[str, Any]] = Field(
        default_factory=list, description="the branch's recorded ops, knob writes, checkpoints"
    )
    chapters: list[dict[str, Any]] = Field(
        default_factory=list, description="the scenario's checkpoints and ops (at, op, name)"
    )
    overview: OverviewView | None = Field(
        None, description="a large session: per-bucket kind counts, per-page data of the viewport"
    )


class PageRecords(BaseModel):
    uid: int
    n: int
    d: str


class StableNodeChanges(BaseModel):
    upsert: list[StableNodeRow] = Field(default_factory=list)
    removed: list[int] = Field(default_factory=list)


class Delta(_Step):
    type: Literal["delta"] = "delta"
    global_: dict[str, int | None] = Field(
        validation_alias=AliasChoices("global", "global_"), serialization_alias="global"
    )
    ksm_stat: dict[str, dict[str, int | bool | None]]
    pages: list[PageRecords]
    mergeable: dict[str, list[tuple[int, int]]]
    frames: FrameRecords
    stable_nodes: StableNodeChanges
    ksmd: dict[str, Any] | None
    unstable_tree: int
    knobs: dict[str, Any]
    overview: OverviewDelta | None = None


class State(BaseModel):
    type: Literal["state"] = "state"
    session: str
    step: int
    head: int
    branch: int
    branches: int
    playing: bool
    speed: float
    realtime: bool
    at_end: bool
    group: str | None = None


class End(BaseModel):
    type: Literal["end"] = "end"
    session: str
    step: int
    reason: Literal["end", "deleted", "expired"] = "end"


class Error(BaseModel):
    type: Literal["error"] = "error"
    message: str
    field: str | None = None
    knob: str | None = None
    errno: str | None = None


ServerMessage = Snapshot | Delta | State | End | Error


# ------------------------------------------------------------------ client messages
# One command model. Each control's fields are one model (``StepBody``, ...: the REST body,
# unknown fields ignored, as a form carries its buttons); the websocket message is the same
# model tagged by ``type`` with unknown fields refused (``StepMsg``, ...). REST, the HTML
# forms, the websocket and shared links all end in a :data:`Command`, so the two shapes
# cannot drift apart.
Grain = Literal["batch", "page", "pass"]
KnobName = Annotated[str, Field(min_length=1, max_length=64)]
"""A sysfs knob's name, wherever a command names one."""


class _Client(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepBody(BaseModel):
    n: int = Field(1, ge=1)
    grain: Grain = "batch"


class BackBody(BaseModel):
    n: int = Field(1, ge=1)


class SeekBody(BaseModel):
    step: int = Field(ge=0)
    branch: int | None = Field(None, ge=0)


class SpeedBody(BaseModel):
    batches_per_second: float | None = Field(None, ge=0.01)
    realtime: bool = False


class KnobBody(BaseModel):
    knob: KnobName
    value: int | str


class InjectBody(BaseModel):
    op: dict[str, Any]


class StepMsg(StepBody, _Client):
    type: Literal["step"]


class BackMsg(BackBody, _Client):
    type: Literal["back"]


class SeekMsg(SeekBody, _Client):
    type: Literal["seek"]


class PlayMsg(_Client):
    type: Literal["play"]


class PauseMsg(_Client):
    type: Literal["pause"]


class ResetMsg(_Client):
    type: Literal["reset"]


class SpeedMsg(SpeedBody, _Client):
    type: Literal["speed"]


class InjectMsg(InjectBody, _Client):
    type: Literal["inject"]


class KnobMsg(KnobBody, _Client):
    type: Literal["knob"]


class AckMsg(_Client):
    """Not a control: the viewer reports the last step it drew (``acked`` in ``/viewers``)."""

    type: Literal["ack"]
    step: int


#: a viewport's bucket sizes: powers of two from 1 to 2**24 pages
MAX_BUCKET = 1 << 24
#: per-page data a viewport may ask for, all its ranges together
MAX_DETAIL_PAGES = 1 << 18


class ViewportMsg(_Client):
    """Not a control: what this viewer shows of a large session (``docs/protocol.md``)."""

    type: Literal["viewport"]
    bucket: int = Field(ge=1, le=MAX_BUCKET, description="pages per bucket, a power of two")
    detail: list[tuple[int, int, int]] = Field(
        default_factory=list,
        max_length=64,
        description="[uid, lo, hi): page ranges wanted page by page",
    )

    @field_validator("bucket")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError("bucket must be a power of two")
        return v

    @field_validator("detail")
    @classmethod
    def _ranges(cls, v: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        total = 0
        for uid, lo, hi in v:
            if uid < 0 or lo < 0 or hi <= lo:
                raise ValueError("each range is [uid, lo, hi) with 0 <= lo < hi")
            total += hi - lo
        if total > MAX_DETAIL_PAGES:
            raise ValueError(f"at most {MAX_DETAIL_PAGES} pages of detail")
        return v


Command = (
    StepMsg | BackMsg | SeekMsg | PlayMsg | PauseMsg | ResetMsg | SpeedMsg | InjectMsg | KnobMsg
)
"""A control of a session's group (everything a client sends but ``ack``)."""

ClientMessage = Annotated[Command | AckMsg | ViewportMsg, Field(discriminator="type")]

COMMANDS: dict[str, type[Command]] = {
    "step": StepMsg,
    "back": BackMsg,
    "seek": SeekMsg,
    "play": PlayMsg,
    "pause": PauseMsg,
    "reset": ResetMsg,
    "speed": SpeedMsg,
    "inject": InjectMsg,
    "knob": KnobMsg,
}


def command(kind: str, fields: Mapping[str, Any] | None = None) -> Command:
    """The command ``kind`` from a REST or form body's fields (unknown fields ignored; raises
    pydantic.ValidationError naming the field, as the body model did)."""
    model = COMMANDS[kind]
    known = {k: v for k, v in (fields or {}).items() if k in model.model_fields and k != "type"}
    return model.model_validate({**known, "type": kind})


_client_adapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Validate one client frame (raises pydantic.ValidationError)."""
    return _client_adapter.validate_json(text)


def dump(message: ServerMessage) -> str:
    return message.model_dump_json(by_alias=True)
