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
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from app.config import Settings
from sim import Kernel, SimError
from sim.stepper import Inject, Next, WriteKnob, validate_op

from . import messages as m
from .errors import ApiError, translate
from .timeline import Branch, LimitError, StepResult, Timeline

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


def ready(t: Timeline) -> bool | None:
    """Whether the timeline's next step is a lockstep point (a scenario step or an injected
    op: every member of a group takes it together); None when it cannot move at all."""
    if t.step < t.head:
        return lockstep_point(t.branch.marks.get(t.step + 1))
    if t.stepper.at_end:
        return None
    return t.stepper.upcoming is not None


def lockstep_point(what: dict[str, Any] | None) -> bool:
    """A recorded step's ``Outcome.what`` is a scenario step or an injected op (knob writes
    are not: a kernel that lacks the knob skips them)."""
    return what is not None and what.get("kind") in ("op", "checkpoint")


@dataclass(frozen=True)
class Layout:
    """A branch cut at its lockstep points: ``points`` are the steps that took one (each
    starts a segment), ``head`` the last step."""

    points: tuple[int, ...]
    head: int

    @classmethod
    def of(cls, b: Branch, head: int) -> Layout:
        pts = tuple(s for s, w in sorted(b.marks.items()) if s <= head and lockstep_point(w))
        return cls(pts, head)

    def start(self, k: int) -> int:
        return self.points[k - 1] if k else 0

    def length(self, k: int) -> int:
        """The number of steps after the segment's first one (its batches)."""
        end = self.points[k] - 1 if k < len(self.points) else self.head
        return max(0, end - self.start(k))


class Lockstep:
    """The group's ticks: segment by segment, as many ticks as its longest member needs;
    tick ``o`` of a segment puts each member ``min(o, its length)`` steps into it."""

    def __init__(self, layouts: list[Layout]):
        self.layouts = layouts
        self.segments = min(len(x.points) for x in layouts) + 1
        self.widths = [max(x.length(k) for x in layouts) + 1 for k in range(self.segments)]

    def _segment(self, i: int, step: int) -> tuple[int, int]:
        x = self.layouts[i]
        k = min(bisect_right(x.points, step), self.segments - 1)
        return k, min(step - x.start(k), self.widths[k] - 1)

    def tick_of(self, i: int, step: int, late: bool = False) -> int:
        """Member ``i``'s ``step`` as a group tick (``late``: at the end of its segment, the
        tick where every member has reached its own end)."""
        k, o = self._segment(i, step)
        if late and o >= self.layouts[i].length(k):
            o = self.widths[k] - 1
        return sum(self.widths[:k]) + o

    def step_of(self, i: int, tick: int) -> int:
        x = self.layouts[i]
        for k, w in enumerate(self.widths):
            if tick < w or k == self.segments - 1:
                return min(x.start(k) + min(tick, x.length(k)), x.head)
            tick -= w
        return x.head  # pragma: no cover - the loop returns


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
        """``n`` steps of the group; False when no member could move.

        Members of a group of two or more advance in lockstep by meaning (:func:`ready`):
        a member whose next step is a scenario step or an injected op waits until every
        member is there, and ksmd's batches in between run on each member at its own pace.
        """
        stream = n <= MAX_STREAMED_STEPS
        moved_any: set[int] = set()
        last: dict[int, StepResult] = {}
        for _ in range(n):
            movers = self.sessions
            if len(self.sessions) > 1:
                states = [(s, ready(s.timeline)) for s in self.sessions]
                can = [(s, r) for s, r in states if r is not None]
                movers = [s for s, r in can if not r] or [s for s, _ in can]
            moved = False
            for i, s in enumerate(self.sessions):
                if s not in movers:
                    continue
                res = perform(s.timeline, Next(grain))
                if res is None:
                    continue
                moved = True
                moved_any.add(i)
                last[i] = res
                s.publish(res, stream)
            if not moved:
                break
        if not stream:
            for i in sorted(moved_any):
                self.sessions[i].broadcast_snapshot()
        if not moved_any:
            for s in self.sessions:
                s.broadcast(m.dump(m.End(session=s.id, step=s.timeline.step)))
        return bool(moved_any)

    def back(self, n: int) -> None:
        if len(self.sessions) == 1:
            t = self.sessions[0].timeline
            self._moved(self.sessions[0], t.seek(max(0, t.step - n)))
            return
        lay = Lockstep([Layout.of(s.timeline.branch, s.timeline.head) for s in self.sessions])
        tick = max(lay.tick_of(i, s.timeline.step) for i, s in enumerate(self.sessions))
        self._align(lay, max(0, tick - n), None)

    def seek(self, step: int, branch: int | None) -> None:
        """``step`` of the first member (the one the controls show); the others go to the same
        place in the story (the same scenario step, then as many of their own batches, or all
        of them when the first member is at the end of its run of batches)."""
        if len(self.sessions) == 1:
            self._moved(self.sessions[0], self.sessions[0].timeline.seek(step, branch))
            return
        lead_t = self.sessions[0].timeline
        if branch is not None and not 0 <= branch < len(lead_t.branches):
            n = len(lead_t.branches)
            raise LimitError("branch", f"no branch {branch} (0..{n - 1})")
        bs = []
        for s in self.sessions:
            t = s.timeline
            b = t.branch if branch is None else t.branches[min(branch, len(t.branches) - 1)]
            bs.append(b)
        lead = bs[0]
        if not 0 <= step <= lead.head:
            raise LimitError("step", f"step {step} is outside branch {lead.id} (0..{lead.head})")
        lay = Lockstep([Layout.of(b, b.head) for b in bs])
        self._align(lay, lay.tick_of(0, step, late=True), branch)

    def _align(self, lay: Lockstep, tick: int, branch: int | None) -> None:
        for i, s in enumerate(self.sessions):
            t = s.timeline
            b = None if branch is None else min(branch, len(t.branches) - 1)
            self._moved(s, t.seek(lay.step_of(i, tick), b))

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
