"""The :class:`SessionManager`: it finds sessions and creates, deletes and forks them.

The manager is the Python API of the dashboard: the REST and websocket routes and the HTML
pages (``app.server.pages``) all go through it. Everything runs on the event loop thread
(handlers are ``async def``), so the simulator is never touched concurrently.

- :meth:`SessionManager.create`, :meth:`~SessionManager.create_compare`,
  :meth:`~SessionManager.fork`
- :meth:`SessionManager.get` (404 as :class:`~app.server.errors.ApiError`), ``list_sessions``,
  ``delete``; idle sessions expire (:meth:`~SessionManager.expire_idle`).
- Nothing a user made is lost: every session's recipe (:mod:`app.server.store`) is written
  the moment it changes (:meth:`~SessionManager.record`, after every control);
  :meth:`~SessionManager.from_recipe` rebuilds a session from ``r=<hash>&step=N``. When
  ``max_sessions`` are alive, the least recently used session nobody watches and nothing
  plays is evicted (its link rebuilds it) instead of a new one refused; identical links
  share one session (:meth:`~SessionManager.linked`).
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
from typing import Any

from app.config import Settings
from sim import Kernel, SimError
from sim.scenario import Scenario
from sim.stepper import Stepper

from . import messages as m
from . import share
from .errors import ApiError, translate
from .groups import Group
from .session import Session, SessionSettings
from .sources import capture_session_from_origin_async, resolve
from .store import Recipe, RecipeStore
from .timeline import LimitError
from .viewers import ByteBudget

#: forks of forks a recipe may chain (each rebuild replays its parent)
MAX_FORK_DEPTH = 16

__all__ = ["Group", "Session", "SessionManager"]


class SessionManager:
    """Every live session (see the module docstring)."""

    def __init__(self, settings: Settings, store: RecipeStore | None = None):
        self.settings = settings
        self.session_settings = SessionSettings.of(settings)
        self.sessions: dict[str, Session] = {}
        self.store = store if store is not None else RecipeStore(settings.data_dir)
        #: link key (see :meth:`linked`) -> the session that link built
        self.links: dict[str, str] = {}
        self.evicted = 0
        #: what every websocket viewer of this server may hold unsent (app.server.viewers)
        self.viewer_budget = ByteBudget(settings.viewer_bytes_total, settings.viewer_stall_seconds)
        self._reaper: asyncio.Task[None] | None = None

    # --------------------------------------------------------------- creation
    def _check_room(self, n: int) -> None:
        """Room for ``n`` more sessions: evict the least recently used idle ones (nobody
        watching, nothing playing: their links rebuild them), else 429."""
        limit = self.settings.max_sessions
        while len(self.sessions) + n > limit:
            idle = [
                s
                for s in self.sessions.values()
                if not s.group.playing
                and not s.busy
                and all(not x.viewers for x in s.group.sessions)
            ]
            if not idle:
                raise ApiError(
                    429,
                    "sessions",
                    f"all {limit} sessions are watched or playing; close one (or wait)",
                )
            victim = min(idle, key=lambda s: max(x.last_active for x in s.group.sessions))
            for member in list(victim.group.sessions):
                if member.id in self.sessions:
                    self.delete(member.id, "evicted")
                    self.evicted += 1

    def _new(
        self,
        scenario: Scenario,
        stepper: Stepper | None,
        preset: str | None,
        origin: str,
        recipe_origin: Recipe | None = None,
        register: bool = True,
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
        if recipe_origin is None:
            recipe_origin = (
                {"preset": preset, "kernel": scenario.kernel, "knobs": dict(scenario.sysfs)}
                if preset is not None
                else {"scenario": scenario.raw, "kernel": scenario.kernel}
            )
        session.recipe_origin = recipe_origin
        if register:
            session.recorder = self.record
            self.sessions[sid] = session
            self.record(session)
        return session

    def create(
        self,
        scenario: Scenario,
        preset: str | None = None,
        *,
        stepper: Stepper | None = None,
        recipe_origin: Recipe | None = None,
    ) -> Session:
        """A new session running ``scenario`` (already resolved, see ``sources.resolve``;
        ``stepper`` and ``recipe_origin`` for a session that starts from a built kernel,
        such as a capture's, ``sources.capture_session``)."""
        self._check_room(1)
        return self._new(
            scenario,
            stepper,
            preset,
            f"start: {scenario.name} on kernel {scenario.kernel}",
            recipe_origin,
        )

    # ---------------------------------------------------------------- recipes
    def recipe(self, session: Session) -> Recipe:
        """What rebuilds ``session``: its origin and its branch's actions (to the head)."""
        t = session.timeline
        return {
            "v": 1,
            "origin": session.recipe_origin,
            "do": share.recipe_items(t.branch.actions[: t.head]),
        }

    def record(self, session: Session) -> str:
        """Store the session's recipe now (committed before this returns); its hash.
        Cached while the branch and its head stay the same (seeks change no recipe)."""
        t = session.timeline
        key = (id(t.branch), t.branch.id, t.head)
        if session.recipe and session.recipe_key == key:
            return session.recipe
        session.recipe = self.store.put(self.recipe(session))
        session.recipe_key = key
        return session.recipe

    def link_params(self, session: Session) -> dict[str, str]:
        """``r`` and ``step``: the link that rebuilds the session's current step (while a
        worker computes: the step before the work, whose recipe is recorded)."""
        info = session.info()
        if session.busy and session.recipe:
            return {"r": session.recipe, "step": str(info.step)}
        return {"r": self.record(session), "step": str(session.timeline.step)}

    def linked(self, key: str) -> Session | None:
        """The session a link with this key built, if it is alive and was not moved since
        (identical links share one session)."""
        sid = self.links.get(key)
        session = self.sessions.get(sid) if sid else None
        if session is None or session.busy:
            self.links.pop(key, None)
            return None
        if getattr(session, "link_state", None) != (session.recipe, session.timeline.step):
            self.links.pop(key, None)
            return None
        session.touch()
        return session

    def remember_link(self, key: str, session: Session) -> None:
        session.link_state = (session.recipe, session.timeline.step)
        self.links[key] = session.id
        if len(self.links) > 4 * self.settings.max_sessions:
            for k in [k for k, sid in self.links.items() if sid not in self.sessions]:
                del self.links[k]

    def _check_recipe(self, recipe: Any, depth: int = 0) -> Recipe:
        if (
            not isinstance(recipe, dict)
            or not isinstance(recipe.get("origin"), dict)
            or not isinstance(recipe.get("do"), list)
        ):
            raise ApiError(422, "r", "not a recipe of this server")
        if depth > MAX_FORK_DEPTH:
            raise ApiError(422, "r", f"forks nested deeper than {MAX_FORK_DEPTH}")
        share.check_steps(recipe["do"], self.settings.max_timeline_steps)
        return recipe

    async def from_recipe(self, key: str, step: int) -> Session:
        """A new session rebuilt from the stored recipe ``key``, at ``step`` (limits
        checked before any work; a failure leaves no session behind)."""
        recipe = self.store.get(key)
        if recipe is None:
            raise ApiError(404, "r", f"no recipe {key[:40]!r} on this server")
        recipe = self._check_recipe(recipe)
        if not 0 <= step <= self.settings.max_timeline_steps:
            raise ApiError(422, "step", f"0..{self.settings.max_timeline_steps}")
        self._check_room(1)
        session = await self._build(recipe, 0)
        session.recorder = self.record
        self.sessions[session.id] = session
        try:
            await self.go_to(session, step)
        except BaseException:
            self.sessions.pop(session.id, None)
            raise
        self.record(session)
        return session

    async def _build(self, recipe: Recipe, depth: int) -> Session:
        """An unregistered session at the head of ``recipe``'s actions."""
        origin = recipe["origin"]
        if "parent" in origin:
            parent_recipe = self.store.get(str(origin.get("parent")))
            at = origin.get("at")
            if parent_recipe is None or type(at) is not int or at < 0:
                raise ApiError(422, "r", "the recipe's parent is missing")
            parent = await self._build(self._check_recipe(parent_recipe, depth + 1), depth + 1)
            try:
                stepper = parent.timeline.stepper_at(at)
            except LimitError as exc:
                raise translate(exc) from None
            session = self._new(
                parent.scenario,
                stepper,
                parent.preset,
                f"forked at step {at} (rebuilt from its link)",
                origin,
                register=False,
            )
        elif "capture" in origin:  # a capture's session: its kernel built from the file
            sc, stepper, _ = await capture_session_from_origin_async(self.settings, origin)
            session = self._new(
                sc, stepper, None, f"start: {sc.name} on kernel {sc.kernel}", origin, False
            )
        else:
            preset = origin.get("preset")
            knobs = origin.get("knobs")
            sc = resolve(
                self.settings,
                preset if isinstance(preset, str) else None,
                origin.get("scenario") if preset is None else None,
                origin.get("kernel") if isinstance(origin.get("kernel"), str) else None,
                knobs if isinstance(knobs, dict) else None,
            )
            session = self._new(
                sc,
                None,
                preset if isinstance(preset, str) else None,
                f"start: {sc.name} on kernel {sc.kernel}",
                origin,
                register=False,
            )
        session.recipe_origin = origin
        limits = self.settings
        for msg in share.messages(recipe["do"], limits.max_timeline_steps, limits.max_step_n):
            try:
                await session.run_control(msg)
            except ApiError as exc:
                raise ApiError(
                    exc.status, "r", f"a recorded action failed: {exc.message}"
                ) from None
        return session

    async def go_to(self, session: Session, step: int) -> None:
        """From the head of the replayed actions to a link's ``step``: back (the recorded
        future stays reachable) or on by plain batch steps."""
        t = session.timeline
        if step < t.head:
            await session.run_control(m.SeekMsg(type="seek", step=step, branch=None))
        while t.step < step:
            n = min(step - t.step, self.settings.max_step_n)
            before = t.step
            await session.run_control(m.StepMsg(type="step", n=n, grain="batch"))
            if t.step == before:
                break

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
        """A new independent session that starts as ``session`` was at ``step``; its recipe
        names the parent's recipe and ``step``."""
        depth = int(session.recipe_origin.get("depth", 0)) + 1
        if depth > MAX_FORK_DEPTH:
            raise ApiError(422, "step", f"forks nested deeper than {MAX_FORK_DEPTH}")
        session.check_idle()
        self._check_room(1)
        try:
            stepper = session.timeline.stepper_at(step)
        except LimitError as exc:
            raise translate(exc) from None
        parent = self.record(session)
        return self._new(
            session.scenario,
            stepper,
            session.preset,
            f"forked from session {session.id} at step {step}",
            {"parent": parent, "at": step, "depth": depth},
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
                reason="expired" if reason in ("expired", "evicted") else "deleted",
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
            and not s.busy
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
        for s in self.sessions.values():
            s.shutdown()
