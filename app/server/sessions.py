"""Sessions, compare groups, play loops and the :class:`SessionManager`.

The manager is the Python API of the dashboard: the REST and websocket routes and the HTML
pages router (``app.server.pages``) all go through it. Everything runs on the event loop
thread (handlers are ``async def``), so the simulator is never touched concurrently.

- :meth:`SessionManager.create`, :meth:`~SessionManager.create_compare`,
  :meth:`~SessionManager.fork`
- :meth:`SessionManager.get` (404 as :class:`~app.server.errors.ApiError`), ``list_sessions``,
  ``delete``
- :meth:`SessionManager.control`: one control message (the websocket's client messages,
  which the REST routes build too), applied to every session of the group (lockstep).
- :meth:`Session.info`, :meth:`Session.snapshot`, :meth:`Session.page_detail`,
  :meth:`Session.state_view`, :meth:`Session.trace`, :meth:`Session.counters_csv`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import Any

from app.config import Settings
from sim import Kernel, SimError
from sim.scenario import Scenario
from sim.stepper import Inject, Stepper, WriteKnob, validate_op

from . import messages as m
from .errors import ApiError, translate
from .groups import Group
from .session import Session
from .timeline import LimitError
from .viewers import Viewer

__all__ = ["Group", "Session", "SessionManager"]


class SessionManager:
    """Every live session (see the module docstring)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.sessions: dict[str, Session] = {}
        self._reaper: asyncio.Task[None] | None = None

    # --------------------------------------------------------------- creation
    def _check_room(self, n: int) -> None:
        if len(self.sessions) + n > self.settings.max_sessions:
            raise ApiError(
                429, "sessions", f"at most {self.settings.max_sessions} sessions at once"
            )

    def _new(
        self, scenario: Scenario, machine: Stepper | None, preset: str | None, origin: str
    ) -> Session:
        if machine is None:
            try:
                machine = Stepper(
                    Kernel(scenario.kernel, scenario.sysfs, record=True), scenario.steps
                )
            except SimError as exc:
                raise translate(exc, "knobs") from None
        sid = secrets.token_urlsafe(6)
        session = Session(self, sid, scenario, machine, preset, origin)
        self.sessions[sid] = session
        return session

    def create(self, scenario: Scenario, preset: str | None = None) -> Session:
        """A new session running ``scenario`` (already resolved, see ``sources.resolve``)."""
        self._check_room(1)
        return self._new(
            scenario, None, preset, f"start: {scenario.name} on kernel {scenario.kernel}"
        )

    def create_compare(
        self, scenario: Scenario, kernels: list[str], preset: str | None = None
    ) -> Group:
        if len(kernels) != 2:
            raise ApiError(422, "kernels", "give exactly two kernel profiles")
        self._check_room(2)
        members = [self.create(scenario.with_kernel(kv), preset) for kv in kernels]
        group = Group(self, members)
        for s in members:
            s.group = group
        return group

    def fork(self, session: Session, step: int) -> Session:
        """A new independent session that starts as ``session`` was at ``step``."""
        self._check_room(1)
        try:
            machine = session.timeline.stepper_at(step)
        except LimitError as exc:
            raise translate(exc) from None
        return self._new(
            session.scenario,
            machine,
            session.preset,
            f"forked from session {session.id} at step {step}",
        )

    # ----------------------------------------------------------------- lookup
    def get(self, sid: str) -> Session:
        session = self.sessions.get(sid)
        if session is None:
            raise ApiError(404, "session", f"no session {sid!r}")
        session.touch()
        return session

    def list_sessions(self) -> list[Session]:
        return list(self.sessions.values())

    def delete(self, sid: str, reason: str = "deleted") -> None:
        session = self.get(sid)
        del self.sessions[sid]
        group = session.group
        if session in group.sessions:
            group.sessions.remove(session)
        if not group.sessions:
            group.pause()
        frame = m.dump(
            m.End(
                session=sid,
                step=session.timeline.step,
                reason="expired" if reason == "expired" else "deleted",
            )
        )
        for v in list(session.viewers):
            v.close_after(frame)

    # --------------------------------------------------------------- controls
    def control(self, session: Session, msg: Any, viewer: Viewer | None = None) -> None:
        """Apply one client message (``app.server.messages``) to the session's group."""
        session.touch()
        group = session.group
        try:
            self._control(group, msg, viewer)
        except (SimError, LimitError) as exc:
            raise translate(exc) from None

    def _control(self, group: Group, msg: Any, viewer: Viewer | None) -> None:
        s = self.settings
        if isinstance(msg, m.AckMsg):
            if viewer is not None:
                viewer.acked = msg.step
        elif isinstance(msg, m.PlayMsg):
            group.play()
        elif isinstance(msg, m.PauseMsg):
            group.pause()
        elif isinstance(msg, m.SpeedMsg):
            if msg.batches_per_second is None and not msg.realtime:
                raise ApiError(422, "batches_per_second", "give batches_per_second or realtime")
            if msg.batches_per_second is not None and msg.batches_per_second > s.max_speed:
                raise ApiError(422, "batches_per_second", f"at most {s.max_speed}")
            group.realtime = msg.realtime
            if msg.batches_per_second is not None:
                group.speed = msg.batches_per_second
            group.broadcast_state()
        elif isinstance(msg, m.StepMsg):
            if msg.n > s.max_step_n:
                raise ApiError(422, "n", f"at most {s.max_step_n} steps at once")
            group.step(msg.n, msg.grain)
        elif isinstance(msg, (m.BackMsg, m.SeekMsg, m.ResetMsg)):
            if isinstance(msg, m.BackMsg) and msg.n > s.max_step_n:
                raise ApiError(422, "n", f"at most {s.max_step_n} steps at once")
            if isinstance(msg, m.ResetMsg):
                group.pause()
            for sess in group.sessions:
                t = sess.timeline
                if isinstance(msg, m.BackMsg):
                    res = t.seek(max(0, t.step - msg.n))
                elif isinstance(msg, m.SeekMsg):
                    target = msg.step
                    if len(group.sessions) > 1:  # lockstep: a shorter member stops at its head
                        b = (
                            t.branch
                            if msg.branch is None
                            else t.branches[min(msg.branch, len(t.branches) - 1)]
                        )
                        target = min(target, b.head)
                    res = t.seek(target, msg.branch)
                else:
                    res = t.seek(0, 0)
                sess.publish(res, stream=False)
                sess.broadcast_snapshot()
        elif isinstance(msg, m.InjectMsg):
            for sess in group.sessions:
                step = validate_op(sess.kernel, msg.op)
                self._check_pages(sess, step)
            for sess in group.sessions:
                sess.publish(sess.timeline.act(Inject(validate_op(sess.kernel, msg.op))))
        elif isinstance(msg, m.KnobMsg):
            members = group.sessions
            if len(members) > 1:  # lockstep: a knob one kernel lacks is skipped there
                members = [x for x in members if msg.knob in x.kernel.profile.knobs] or members
            for sess in members:
                sess.publish(sess.timeline.act(WriteKnob(msg.knob, msg.value)))
        else:  # pragma: no cover - the union is closed
            raise ApiError(422, "type", "unknown message")

    def _check_pages(self, session: Session, step: Any) -> None:
        k = session.kernel
        extra = 0
        if step.op == "mmap":
            extra = step.count or 0
        elif step.op == "fork":
            extra = sum(v.npages for v in k.mm(step.proc).vmas.values())
        if extra and session.pages() + extra > self.settings.max_pages:
            raise ApiError(
                413,
                "pages",
                f"this would map {session.pages() + extra} pages; "
                f"this server allows {self.settings.max_pages} per session",
            )

    # ----------------------------------------------------------------- expiry
    def expire_idle(self) -> list[str]:
        """Drop sessions with no viewer and no request for ``idle_expiry_seconds``."""
        now = time.monotonic()
        gone = [
            sid
            for sid, s in self.sessions.items()
            if not s.viewers
            and not s.group.playing
            and now - s.last_active > self.settings.idle_expiry_seconds
        ]
        for sid in gone:
            self.delete(sid, "expired")
        return gone

    async def run_reaper(self) -> None:
        while True:
            await asyncio.sleep(self.settings.expiry_check_seconds)
            self.expire_idle()

    def start(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self.run_reaper())

    async def stop(self) -> None:
        for s in self.sessions.values():
            s.group.playing = False
            if s.group.task is not None:
                s.group.task.cancel()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
