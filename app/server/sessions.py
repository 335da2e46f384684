"""The :class:`SessionManager`: it finds sessions and creates, deletes and forks them.

The manager is the Python API of the dashboard: the REST and websocket routes and the HTML
pages (``app.server.pages``) all go through it. Everything runs on the event loop thread
(handlers are ``async def``), so the simulator is never touched concurrently.

- :meth:`SessionManager.create`, :meth:`~SessionManager.create_compare`,
  :meth:`~SessionManager.fork`
- :meth:`SessionManager.get` (404 as :class:`~app.server.errors.ApiError`), ``list_sessions``,
  ``delete``; idle sessions expire (:meth:`~SessionManager.expire_idle`).
- Controls are not the manager's: :meth:`Session.control` hands a command
  (:data:`app.server.messages.Command`) to the session's :class:`Group`, which applies it to
  every member (lockstep).
- :meth:`Session.info`, :meth:`Session.snapshot`, :meth:`Session.page_detail`,
  :meth:`Session.state_view`, :meth:`Session.trace`, :meth:`Session.counters_csv`.

Imports go one way: ``sessions -> session -> groups``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

from app.config import Settings
from sim import Kernel, SimError
from sim.scenario import Scenario
from sim.stepper import Stepper

from . import messages as m
from .errors import ApiError, translate
from .groups import Group
from .session import Session, SessionSettings
from .timeline import LimitError

__all__ = ["Group", "Session", "SessionManager"]


class SessionManager:
    """Every live session (see the module docstring)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.session_settings = SessionSettings.of(settings)
        self.sessions: dict[str, Session] = {}
        self._reaper: asyncio.Task[None] | None = None

    # --------------------------------------------------------------- creation
    def _check_room(self, n: int) -> None:
        if len(self.sessions) + n > self.settings.max_sessions:
            raise ApiError(
                429, "sessions", f"at most {self.settings.max_sessions} sessions at once"
            )

    def _new(
        self, scenario: Scenario, stepper: Stepper | None, preset: str | None, origin: str
    ) -> Session:
        if stepper is None:
            try:
                stepper = Stepper(
                    Kernel(scenario.kernel, scenario.sysfs, record=True), scenario.steps
                )
            except SimError as exc:
                raise translate(exc, "knobs") from None
            except (ValueError, OverflowError) as exc:
                raise ApiError(422, "knobs", f"cannot use this value: {str(exc)[:120]}") from None
        sid = secrets.token_urlsafe(6)
        session = Session(self.session_settings, sid, scenario, stepper, preset, origin)
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
    ) -> Group[Session]:
        if len(kernels) != 2:
            raise ApiError(422, "kernels", "give exactly two kernel profiles")
        self._check_room(2)
        members = [self.create(scenario.with_kernel(kv), preset) for kv in kernels]
        group = Group(self.session_settings.group, members)
        for s in members:
            s.group = group
        return group

    def fork(self, session: Session, step: int) -> Session:
        """A new independent session that starts as ``session`` was at ``step``."""
        self._check_room(1)
        try:
            stepper = session.timeline.stepper_at(step)
        except LimitError as exc:
            raise translate(exc) from None
        return self._new(
            session.scenario,
            stepper,
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
