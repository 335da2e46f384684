"""Pydantic models of the live view's JSON answers and websocket messages.

Websocket ``/ws/live`` protocol (one JSON object per message, tagged by ``type``):

Server -> client
  ``sample``  every interval: ``ksm`` (every sysfs file, missing ones ``null`` and listed in
              ``missing``, with the derived figures), ``procs`` (the KSM users) and
              ``files`` (sim/ksm_files.py's table: unit, role, meaning of each file).
  ``error``   ``detail`` says what went wrong (bad client message, a read that failed); the
              socket stays open.

Client -> server
  ``{"type": "interval", "seconds": 2.5}``  change this socket's sampling period
                                            (clamped to 0.05 s .. 3600 s).
  ``{"type": "sample"}``                    send a sample now.

The answers are validated from the attributes of what :mod:`app.kernel.host` reads
(``from_attributes``): ``KsmSample.model_validate(host.ksm.read_ksm(...))`` and so on; the
host's plain records (``ProcKsm``, ``Derived``) are used as they are, never declared twice.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.kernel.host.ksm import Derived, ProcKsm
from sim.ksm_files import table as ksm_files_table


class HostModel(BaseModel):
    """A model read from the attributes of a host dataclass (``model_validate(obj)``)."""

    model_config = ConfigDict(from_attributes=True)


class KsmSample(HostModel):
    """One reading of ``/sys/kernel/mm/ksm``: ``values[name]`` is null when missing."""

    time: float
    available: bool = Field(description="False when the KSM sysfs directory does not exist")
    values: dict[str, int | str | None]
    missing: list[str] = Field(description="files this kernel does not have")
    knobs: list[str] = Field(description="the writable files (shown, never written)")
    choices: dict[str, list[str]] = Field(description="e.g. advisor_mode: [none, scan-time]")
    errors: dict[str, str] = Field(description="files that exist but could not be read")
    derived: list[Derived] = Field(description="figures derived from the values")


class ProcTable(HostModel):
    time: float
    procs: list[ProcKsm] = Field(description="the KSM users, null where a line is absent")
    scanned: int = Field(description="process directories looked at")
    vanished: int = Field(description="processes that exited while being read")
    unreadable: int = Field(description="processes whose files were not readable")


class Vma(HostModel):
    start: str = Field(description="hex address")
    end: str
    perms: str
    name: str
    pages: int
    first_page: int = Field(description="index of its first page among the mergeable pages")
    ksm_kb: int | None = Field(description="smaps KSM: (6.6+), null when absent")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _hex(cls, value: object) -> object:
        return f"{value:#x}" if isinstance(value, int) else value


class PageMap(HostModel):
    """A window of a process's mergeable pages, one character per page in ``cells``.

    ``-`` not present, ``Z`` zero page, ``K`` KSM page, ``A`` other anonymous page, ``F``
    present non-anonymous page, ``?`` a KSM page or a page a merge left behind copy-on-write
    (where ``KPF_KSM`` is unreliable and the smaps counts cannot tell which). ``groups``
    lists ``[index in window, group]`` for every ``K``
    cell; the group is the page frame number, equal for PTEs that map the same KSM page.
    """

    pid: int
    vmas: list[Vma]
    total_pages: int
    offset: int
    limit: int
    available: bool
    reason: str | None
    cells: str
    groups: list[list[int]]
    counts: dict[str, int]
    classification: str


class SampleMessage(BaseModel):
    type: Literal["sample"] = "sample"
    ksm: KsmSample
    procs: ProcTable
    files: list[dict[str, Any]] = Field(default_factory=ksm_files_table)


class ErrorMessage(BaseModel):
    type: Literal["error"] = "error"
    detail: str


class IntervalRequest(BaseModel):
    type: Literal["interval"]
    seconds: float


class SampleRequest(BaseModel):
    type: Literal["sample"]
