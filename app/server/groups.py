"""Sessions that advance in lockstep: every control of a session, and the play loop.

A session alone is a group of one; a compare pair is a group of two. :meth:`Group.apply`
takes one validated :data:`~app.server.messages.Command` (from the websocket, a REST route,
an HTML form or a shared link) and fans it out to every member: ``step``, ``back``, ``seek``,
``reset``, ``inject``, ``knob``, ``play``, ``pause``, ``speed``. :meth:`Group.play` runs a
task that steps at the group's rate (batches per second, or real time from
``sleep_millisecs``). :func:`perform` is the one place where a command becomes a timeline
action.

A group knows its members through :class:`Member` (what it needs of a
:class:`~app.server.session.Session`) and its limits through :class:`GroupSettings`, so this
module imports neither the session nor the manager.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from app.config import Settings
from sim import Kernel, SimError
from sim.stepper import Inject, Next, WriteKnob, validate_op

from . import messages as m
from .errors import ApiError, translate
from .timeline import LimitError, StepResult, Timeline

log = logging.getLogger("ksmlab.server")

#: a `step` with more steps than this sends one snapshot at the end instead of deltas
MAX_STREAMED_STEPS = 8


@dataclass(frozen=True)
class GroupSettings:
    """The settings a group needs (see :class:`app.config.Settings` for their meaning)."""

    default_speed: float
    max_speed: float
    max_step_n: int
    max_pages: int

    @classmethod
    def of(cls, s: Settings) -> GroupSettings:
        return cls(s.default_speed, s.max_speed, s.max_step_n, s.max_pages)


class Member(Protocol):
    """What a group needs of a session."""

    id: str
    timeline: Timeline

    @property
    def kernel(self) -> Kernel: ...

    def pages(self) -> int: ...

    def publish(self, res: StepResult | None, stream: bool = True) -> None: ...

    def broadcast(self, frame: str) -> None: ...

    def broadcast_snapshot(self) -> None: ...

    def state_message(self) -> m.State: ...


S = TypeVar("S", bound=Member)


def perform(timeline: Timeline, action: Next | Inject | WriteKnob) -> StepResult | None:
    """The one place where a validated command becomes a timeline action (``Next``: None
    when nothing can happen)."""
    if isinstance(action, Next):
        return timeline.forward(action.grain)
    return timeline.act(action)


class Group(Generic[S]):
    """Sessions that advance in lockstep (one session alone is a group of one)."""

    def __init__(self, settings: GroupSettings, sessions: list[S]):
        self.settings = settings
        self.id = secrets.token_hex(4)
        self.sessions = sessions
        self.playing = False
        self.speed = settings.default_speed
        self.realtime = False
        self.task: asyncio.Task[None] | None = None

    def rate(self) -> float:
        if self.realtime and self.sessions:
            ms = int(self.sessions[0].kernel.knobs.get("sleep_millisecs", 20) or 1)
            return min(self.settings.max_speed, 1000.0 / max(1, ms))
        return self.speed

    def broadcast_state(self) -> None:
        for s in self.sessions:
            s.broadcast(m.dump(s.state_message()))

    # ------------------------------------------------------------------ controls
    def apply(self, msg: m.Command) -> None:
        """One command, applied to every member (:class:`ApiError` on refusal)."""
        try:
            self._apply(msg)
        except (SimError, LimitError) as exc:
            raise translate(exc) from None

    def _apply(self, msg: m.Command) -> None:
        if isinstance(msg, m.PlayMsg):
            self.play()
        elif isinstance(msg, m.PauseMsg):
            self.pause()
        elif isinstance(msg, m.SpeedMsg):
            self.set_speed(msg.batches_per_second, msg.realtime)
        elif isinstance(msg, m.StepMsg):
            self._check_n(msg.n)
            self.step(msg.n, msg.grain)
        elif isinstance(msg, m.BackMsg):
            self._check_n(msg.n)
            self.back(msg.n)
        elif isinstance(msg, m.SeekMsg):
            self.seek(msg.step, msg.branch)
        elif isinstance(msg, m.ResetMsg):
            self.reset()
        elif isinstance(msg, m.InjectMsg):
            self.inject(msg.op)
        elif isinstance(msg, m.KnobMsg):
            self.knob(msg.knob, msg.value)
        else:  # pragma: no cover - the union is closed
            raise ApiError(422, "type", "unknown message")

    def _check_n(self, n: int) -> None:
        if n > self.settings.max_step_n:
            raise ApiError(422, "n", f"at most {self.settings.max_step_n} steps at once")

    def set_speed(self, batches_per_second: float | None, realtime: bool) -> None:
        if batches_per_second is None and not realtime:
            raise ApiError(422, "batches_per_second", "give batches_per_second or realtime")
        if batches_per_second is not None and batches_per_second > self.settings.max_speed:
            raise ApiError(422, "batches_per_second", f"at most {self.settings.max_speed}")
        self.realtime = realtime
        if batches_per_second is not None:
            self.speed = batches_per_second
        self.broadcast_state()

    def step(self, n: int, grain: m.Grain) -> bool:
        """``n`` steps of every member; False when none of them could move."""
        stream = n <= MAX_STREAMED_STEPS
        moved = False
        for s in self.sessions:
            last = None
            for _ in range(n):
                res = perform(s.timeline, Next(grain))
                if res is None:
                    break
                moved = True
                last = res
                s.publish(res, stream)
            if not stream and last is not None:
                s.broadcast_snapshot()
        if not moved:
            for s in self.sessions:
                s.broadcast(m.dump(m.End(session=s.id, step=s.timeline.step)))
        return moved

    def back(self, n: int) -> None:
        for s in self.sessions:
            t = s.timeline
            self._moved(s, t.seek(max(0, t.step - n)))

    def seek(self, step: int, branch: int | None) -> None:
        for s in self.sessions:
            t = s.timeline
            target = step
            if len(self.sessions) > 1:  # lockstep: a shorter member stops at its head
                b = t.branch if branch is None else t.branches[min(branch, len(t.branches) - 1)]
                target = min(target, b.head)
            self._moved(s, t.seek(target, branch))

    def reset(self) -> None:
        self.pause()
        for s in self.sessions:
            self._moved(s, s.timeline.seek(0, 0))

    @staticmethod
    def _moved(s: S, res: StepResult | None) -> None:
        s.publish(res, stream=False)
        s.broadcast_snapshot()

    def inject(self, op: dict[str, Any]) -> None:
        """A scenario op, checked on every member before any member applies it."""
        for s in self.sessions:
            self._check_pages(s, validate_op(s.kernel, op))
        for s in self.sessions:
            s.publish(perform(s.timeline, Inject(validate_op(s.kernel, op))))

    def knob(self, knob: str, value: int | str) -> None:
        members = self.sessions
        if len(members) > 1:  # lockstep: a knob one kernel lacks is skipped there
            members = [x for x in members if knob in x.kernel.profile.knobs] or members
        for s in members:
            s.publish(perform(s.timeline, WriteKnob(knob, value)))

    def _check_pages(self, s: S, step: Any) -> None:
        k = s.kernel
        extra = 0
        if step.op == "mmap":
            extra = step.count or 0
        elif step.op == "fork":
            extra = sum(v.npages for v in k.mm(step.proc).vmas.values())
        limit = self.settings.max_pages
        if extra and s.pages() + extra > limit:
            raise ApiError(
                413,
                "pages",
                f"this would map {s.pages() + extra} pages; this server allows {limit} per session",
            )

    # --------------------------------------------------------------------- play
    def play(self) -> None:
        if self.playing:
            return
        self.playing = True
        self.task = asyncio.get_running_loop().create_task(self._play())
        self.broadcast_state()

    def pause(self) -> None:
        self.playing = False
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.task = None
        self.broadcast_state()

    async def _play(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.playing:
                t0 = loop.time()
                try:
                    moved = self.step(1, "batch")
                except Exception as exc:  # a limit, or a bug: stop playing, tell the viewers
                    if not isinstance(exc, LimitError):
                        log.exception("play loop failed")
                    err = (
                        translate(exc).message_model()
                        if isinstance(exc, LimitError)
                        else m.Error(message=f"internal error: {exc!r}")
                    )
                    for s in self.sessions:
                        s.broadcast(m.dump(err))
                    moved = False
                if not moved:
                    self.playing = False
                    self.task = None
                    self.broadcast_state()
                    return
                wait = 1.0 / max(0.01, self.rate()) - (loop.time() - t0)
                await asyncio.sleep(min(100.0, max(0.0, wait)))
        except asyncio.CancelledError:
            pass
