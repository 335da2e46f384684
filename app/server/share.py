"""Shared links that carry what was done by hand: the ``do`` query parameter.

A session page's link rebuilds its state from the preset, kernel, knob overrides and
``step``. That is enough while every step was "what comes next" in batches; an injected op,
a knob written from the dashboard or a step by page or pass is carried by ``do``: the
branch's typed actions (:mod:`sim.stepper`) as JSON, zlib-compressed, base64url without
padding. Items:

- ``[n, grain]``: ``n`` times :class:`~sim.stepper.Next` by ``grain`` (``batch``, ``page``,
  ``pass``);
- ``{"op": ...}``: :class:`~sim.stepper.Inject`, a scenario op injected
  (``docs/protocol.md``, ``inject``), as its scenario step;
- ``["knob", name, value]``: :class:`~sim.stepper.WriteKnob`, a sysfs write.

Opening the link replays them through the same validated controls as the buttons (so a
forged ``do`` gets the same errors, naming the field ``do``), then goes to ``step``: the
recorded future after ``step`` stays reachable, as it was for the presenter. Items therefore
decode to client messages (:func:`messages`), not straight to actions: an injected op only
becomes a :class:`~sim.stepper.Inject` once validated against the session's kernel.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from sim.stepper import GRAINS, Action, Inject, Next

from . import messages as m
from .errors import ApiError

MAX_ENCODED = 16 * 1024  # characters of ``do``
MAX_JSON = 256 * 1024  # bytes once inflated
MAX_RUN = 1 << 40  # steps in one item (the step limit is checked in check_steps)
Item = list[Any] | dict[str, Any]


def compact(actions: Sequence[Action]) -> list[Item]:
    """The actions as ``do`` items (runs of "next" by the same grain collapsed)."""
    items: list[Item] = []
    for action in actions:
        if isinstance(action, Next):
            last = items[-1] if items else None
            if isinstance(last, list) and last[0] != "knob" and last[1] == action.grain:
                last[0] += 1
            else:
                items.append([1, action.grain])
        elif isinstance(action, Inject):
            items.append(action.step.to_dict())
        else:
            items.append(["knob", action.knob, action.value])
    return items


def recipe_items(actions: Sequence[Action]) -> list[Item]:
    """The ``do`` items a recipe stores: :func:`compact`, with a trailing run of plain
    batch steps left out (a link's ``step`` redoes it), so playing changes no recipe."""
    items = compact(actions)
    if items and isinstance(items[-1], list) and items[-1][1:] == ["batch"]:
        items.pop()
    return items


def encode(actions: Sequence[Action]) -> str | None:
    """``do`` for these actions; None when the plain ``step`` reproduces them."""
    items = compact(actions)
    if all(isinstance(i, list) and i[0] != "knob" and i[1] == "batch" for i in items):
        return None
    raw = json.dumps(items, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).rstrip(b"=").decode()


def _bad(message: str) -> ApiError:
    return ApiError(422, "do", message)


def decode(text: str) -> list[Item]:
    """The items of a ``do`` parameter (shape checked; the ops are checked when applied)."""
    if len(text) > MAX_ENCODED:
        raise _bad(f"at most {MAX_ENCODED} characters")
    try:
        packed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, MAX_JSON + 1)
        if len(raw) > MAX_JSON or inflater.unconsumed_tail:
            raise _bad(f"at most {MAX_JSON} bytes of actions")
        items = json.loads(raw)
    except (binascii.Error, zlib.error, ValueError, RecursionError):
        raise _bad("not a link made by KSM Lab (cannot decode the actions)") from None
    if not isinstance(items, list):
        raise _bad("not a list of actions")
    for i, item in enumerate(items):
        ok = (
            isinstance(item, dict)
            or (
                isinstance(item, list)
                and len(item) == 2
                and type(item[0]) is int
                and 1 <= item[0] <= MAX_RUN
                and item[1] in GRAINS
            )
            or (
                isinstance(item, list)
                and len(item) == 3
                and item[0] == "knob"
                and isinstance(item[1], str)
                and isinstance(item[2], (int, str))
                and not isinstance(item[2], bool)
            )
        )
        if not ok:
            raise _bad(f'action {i}: expected [n, grain], {{"op": ...}} or ["knob", name, value]')
    return items


def count_steps(items: Sequence[Item]) -> int:
    """How many timeline steps ``items`` make (arithmetic only: nothing is built)."""
    total = 0
    for item in items:
        if isinstance(item, list) and item[0] != "knob":
            total += item[0]
        else:
            total += 1
    return total


def check_steps(items: Sequence[Item], max_steps: int) -> None:
    """422 naming ``do`` if the items make more than ``max_steps`` steps: checked before
    any message is built or any step runs (a 31-character link may say 10^12)."""
    if count_steps(items) > max_steps:
        raise _bad(f"at most {max_steps} steps in a link")


def messages(items: Sequence[Item], max_steps: int, chunk: int | None = None) -> list[Any]:
    """Client messages that redo ``items`` (at most ``max_steps`` steps in all, checked
    first; steps in chunks of at most ``chunk``, default ``max_steps``)."""
    check_steps(items, max_steps)
    chunk = chunk or max_steps
    out: list[Any] = []
    total = 0
    try:
        for item in items:
            if isinstance(item, dict):
                out.append(m.InjectMsg(type="inject", op=item))
                total += 1
            elif item[0] == "knob":
                out.append(m.KnobMsg(type="knob", knob=item[1], value=item[2]))
                total += 1
            else:
                n, grain = item
                total += n
                while n > 0:
                    out.append(m.StepMsg(type="step", n=min(n, chunk), grain=grain))
                    n -= chunk
            if total > max_steps:
                raise _bad(f"at most {max_steps} steps in a link")
    except ValidationError as exc:
        raise _bad(f"bad action: {exc.errors()[0].get('msg')}") from None
    return out
