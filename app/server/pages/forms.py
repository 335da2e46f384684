"""Form parsing: what a field or a button of a page stands for, as a command.

Every control a page sends ends in the one command model
(:data:`app.server.messages.Command`), validated as the websocket's and the REST routes' are;
a bad field raises :class:`~app.server.errors.ApiError` naming it, which the partial shows
inline.

- :func:`control_command`: a button of the controls partial (``action=``);
- :func:`knob_overrides` / :func:`knob_command`: ``knob.<name>=value`` fields (also the
  query of a session link);
- :func:`inject_op` / :func:`inject_command`: an event button of the inject partial;
- :func:`knob_warnings`: the unknown knob names of an uploaded scenario, each with the
  closest known name.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from .. import messages as m
from ..errors import ApiError, translate
from ..session import Session
from ..sources import unknown_knob
from .render import SPEEDS

CONTROL_ACTIONS = (
    "play",
    "pause",
    "step",
    "pass",
    "back",
    "reset",
    "speed",
    "realtime",
    "seek",
    "branch",
    "fork",
)


def to_int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value is not None and len(value) <= 20 else default
    except ValueError:
        return default


def command(kind: str, fields: Mapping[str, Any] | None = None) -> m.Command:
    """:func:`app.server.messages.command`, a validation error as an :class:`ApiError`."""
    try:
        return m.command(kind, fields)
    except ValidationError as exc:
        raise translate(exc) from None


def control_command(action: str, form: Mapping[str, Any], session: Session) -> m.Command:
    """The command a button of the controls partial stands for (``fork`` is not a command:
    the partial handles it)."""
    if action == "play":
        return command("play")
    if action == "pause":
        return command("pause")
    if action == "step":
        return command("step", {"n": 1})
    if action == "pass":
        return command("step", {"n": 1, "grain": "pass"})
    if action == "back":
        return command("back", {"n": 1})
    if action == "reset":
        return command("reset")
    if action == "speed":
        i = to_int(str(form.get("speed")), -1)
        if not 0 <= i < len(SPEEDS):
            raise ApiError(422, "speed", f"choose a speed stop 0..{len(SPEEDS) - 1}")
        return command("speed", {"batches_per_second": SPEEDS[i]})
    if action == "realtime":
        return command("speed", {"batches_per_second": None, "realtime": True})
    if action == "branch":
        b = to_int(str(form.get("branch")), -1)
        branches = session.timeline.branches
        if not 0 <= b < len(branches):
            raise ApiError(422, "branch", f"choose a branch 0..{len(branches) - 1}")
        return command("seek", {"step": branches[b].head, "branch": b})
    if action == "seek":
        step = to_int(str(form.get("seek")), -1)
        if step < 0:
            raise ApiError(422, "seek", "a step number >= 0")
        return command("seek", {"step": step, "branch": None})
    raise ApiError(422, "action", f"one of {', '.join(CONTROL_ACTIONS)}")


def knob_overrides(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """``knob.<name>=value`` fields (query or form) as a sysfs dict; numbers as ints."""
    out: dict[str, Any] = {}
    for key, value in items:
        if not key.startswith("knob.") or not isinstance(value, str) or value.strip() == "":
            continue
        v = value.strip()
        out[key[5:]] = int(v) if len(v) <= 20 and v.lstrip("-").isdigit() else v
    return out


def knob_command(knob: str, value: Any) -> m.Command:
    """One knob field of the knobs partial as a ``knob`` command."""
    return command("knob", {"knob": knob, "value": value})


def inject_op(action: str, f: Mapping[str, str], session: Session) -> dict[str, Any]:
    """The scenario step an inject button stands for (``docs/protocol.md`` ``inject``)."""
    proc, vma, pages = f.get("proc", ""), f.get("vma", ""), f.get("pages", "")
    where: dict[str, Any] = {"proc": proc, "vma": vma}
    if pages:
        where["pages"] = pages
    if action in ("write", "write-zero", "write-unique"):
        content = {"write-zero": "zero", "write-unique": "unique"}.get(action) or f.get("content")
        if not content:
            raise ApiError(422, "content", "a label to write, e.g. A")
        return {"op": "write", **where, "content": content}
    if action == "read":
        return {"op": "read", **where}
    if action in ("MADV_MERGEABLE", "MADV_UNMERGEABLE"):
        return {"op": "madvise", **where, "advice": action}
    if action == "fork":
        child = f.get("child") or next(
            (c for c in string.ascii_uppercase if c not in session.kernel.procs), "child"
        )
        return {"op": "fork", "proc": proc, "child": child}
    if action == "exit":
        return {"op": "exit", "proc": proc}
    if action in ("prctl-0", "prctl-1"):
        return {"op": "prctl", "proc": proc, "value": int(action[-1])}
    if action in ("run-0", "run-1", "run-2"):
        return {"op": "sysfs", "knob": "run", "value": int(action[-1])}
    raise ApiError(422, "op", f"unknown event {action!r}")


def inject_command(op: dict[str, Any]) -> m.Command:
    """An op of :func:`inject_op` as an ``inject`` command."""
    return command("inject", {"op": op})


def knob_warnings(doc: Any) -> list[dict[str, str]]:
    """The knob names of a scenario document (``sysfs`` and ``sysfs`` steps) that no kernel
    has, each as ``{"field", "knob", "message"}`` with the closest known name when there is
    one (``use_zero_page`` -> ``use_zero_pages``). A kernel skips such a write, so a typo
    would silently change the story."""
    if not isinstance(doc, Mapping):
        return []
    found: list[tuple[str, str]] = []
    sysfs = doc.get("sysfs")
    if isinstance(sysfs, Mapping):
        found += [(f"sysfs.{k}", str(k)) for k in sysfs]
    steps = doc.get("steps")
    if isinstance(steps, list):
        for i, step in enumerate(steps):
            if isinstance(step, Mapping) and step.get("op") == "sysfs" and "knob" in step:
                found.append((f"steps[{i}].knob", str(step["knob"])))
    out = []
    for field, knob in found:
        why = unknown_knob(knob)
        if why is not None:
            out.append({"field": field, "knob": knob, "message": why})
    return out
