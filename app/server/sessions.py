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
import csv
import io
import logging
import secrets
import time
from typing import Any

from app.config import Settings
from sim import Kernel, SimError
from sim.scenario import Scenario
from sim.snapshot import page_detail, structure

from . import messages as m
from .encode import describe
from .errors import ApiError, translate
from .fastsend import text_frame
from .schemas import SessionInfo
from .timeline import LimitError, Machine, StepResult, Timeline, validate_op
from .viewers import Viewer

log = logging.getLogger("ksmlab.server")

#: a `step` with more steps than this sends one snapshot at the end instead of deltas
MAX_STREAMED_STEPS = 8


def _now_ms() -> float:
    return time.time() * 1000.0


class Session:
    """One simulated machine with its timeline and its viewers."""

    def __init__(
        self,
        manager: SessionManager,
        sid: str,
        scenario: Scenario,
        machine: Machine,
        preset: str | None,
        origin: str,
    ):
        s = manager.settings
        self.manager = manager
        self.id = sid
        self.scenario = scenario
        self.preset = preset
        self.timeline = Timeline(
            scenario,
            machine,
            interval=s.checkpoint_interval,
            memory_bytes=s.timeline_memory_mb << 20,
            max_steps=s.max_timeline_steps,
            max_branches=s.max_branches,
        )
        from .encode import Encoder

        self.encoder = Encoder(sid)
        self.viewers: set[Viewer] = set()
        self.group: Group = Group(manager, [self])
        self.last_active = time.monotonic()
        self.version = 0
        self.summary = origin
        self.events: list[m.Event] = []
        self.event_counts: dict[str, int] = {}
        self.ts = _now_ms()
        self._snapshot: tuple[int, str] | None = None

    @property
    def kernel(self) -> Kernel:
        return self.timeline.kernel

    def pages(self) -> int:
        return sum(v.npages for mm in self.kernel.procs.values() for v in mm.vmas.values())

    # ------------------------------------------------------------------ views
    def info(self) -> SessionInfo:
        t = self.timeline
        g = self.group
        return SessionInfo(
            id=self.id,
            name=self.scenario.name,
            kernel=self.kernel.version,
            preset=self.preset,
            group=g.id if len(g.sessions) > 1 else None,
            step=t.step,
            head=t.head,
            branch=t.branch.id,
            branches=len(t.branches),
            playing=g.playing,
            speed=g.speed,
            realtime=g.realtime,
            at_end=t.at_end(),
            pages=self.pages(),
            viewers=len(self.viewers),
            summary=self.summary,
        )

    def _meta(self) -> dict[str, Any]:
        t = self.timeline
        return {
            "step": t.step,
            "head": t.head,
            "branch": t.branch.id,
            "ts": self.ts,
            "summary": self.summary,
            "events": self.events,
            "event_counts": self.event_counts,
        }

    def snapshot(self) -> m.Snapshot:
        return self.encoder.snapshot(self.kernel, self._meta())

    def snapshot_text(self) -> str:
        if self._snapshot is None or self._snapshot[0] != self.version:
            self._snapshot = (self.version, m.dump(self.snapshot()))
        return self._snapshot[1]

    def state_message(self) -> m.State:
        i = self.info()
        return m.State(
            session=self.id,
            step=i.step,
            head=i.head,
            branch=i.branch,
            branches=i.branches,
            playing=i.playing,
            speed=i.speed,
            realtime=i.realtime,
            at_end=i.at_end,
            group=i.group,
        )

    def state_view(self) -> dict[str, Any]:
        return structure(self.kernel)

    def page_detail(self, proc: str, vma: str, page: int) -> dict[str, Any]:
        try:
            return page_detail(self.kernel, proc, vma, page)
        except (SimError, KeyError) as exc:
            raise ApiError(404, "page", str(exc).strip("'")) from None

    def trace(self) -> dict[str, Any]:
        cps = list(self.timeline.trace_checkpoints())
        cps.append(self.kernel.checkpoint(f"step {self.timeline.step}"))
        return {
            "format": "ksm-trace/1",
            "scenario": self.scenario.name,
            "source": f"ksmlab-sim {self.kernel.version}",
            "checkpoints": cps,
        }

    def counters_csv(self) -> str:
        rows = self.timeline.counter_rows()
        k = self.kernel
        gnames = list(k.global_counters())
        snames = list(_STAT_FIELDS)
        procs: list[str] = []
        for _, stats in rows:
            for p in stats:
                if p not in procs:
                    procs.append(p)
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["step", *gnames, *(f"{p}.{f}" for p in procs for f in snames)])
        for step, (glob, stats) in enumerate(rows):
            cells: list[Any] = [step, *("" if v is None else v for v in glob)]
            for p in procs:
                vals = stats.get(p)
                cells.extend(
                    "" if vals is None or v is None else v for v in (vals or (None,) * len(snames))
                )
            w.writerow(cells)
        return out.getvalue()

    # ------------------------------------------------------------ publishing
    def broadcast(self, frame: str) -> None:
        if not self.viewers:
            return
        wire = text_frame(frame)
        for v in self.viewers:
            v.push(frame, wire)

    def broadcast_snapshot(self) -> None:
        frames = [self.snapshot_text(), m.dump(self.state_message())]
        for v in self.viewers:
            v.reset(frames)

    def publish(self, res: StepResult | None, stream: bool = True) -> None:
        """Record what the last step did; send its delta (or a snapshot) to every viewer."""
        self.version += 1
        self.ts = _now_ms()
        if res is None:
            self.summary, self.events, self.event_counts = "step 0", [], {}
        else:
            self.summary, self.events, self.event_counts = describe(
                self.kernel, res.log, res.action
            )
        if not stream:
            return
        delta = self.encoder.delta(self.kernel, res.log if res else None, self._meta())
        if delta is None:
            self.broadcast_snapshot()
        else:
            self.broadcast(m.dump(delta))

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def resync_frames(self) -> list[str]:
        return [self.snapshot_text(), m.dump(self.state_message())]


_STAT_FIELDS = (
    "ksm_rmap_items",
    "ksm_zero_pages",
    "ksm_merging_pages",
    "ksm_process_profit",
    "ksm_mergeable",
    "ksm_merge_any",
)


class Group:
    """Sessions that advance in lockstep (one session alone is a group of one)."""

    def __init__(self, manager: SessionManager, sessions: list[Session]):
        self.manager = manager
        self.id = secrets.token_hex(4)
        self.sessions = sessions
        self.playing = False
        self.speed = manager.settings.default_speed
        self.realtime = False
        self.task: asyncio.Task[None] | None = None

    def rate(self) -> float:
        if self.realtime and self.sessions:
            ms = int(self.sessions[0].kernel.knobs.get("sleep_millisecs", 20) or 1)
            return min(self.manager.settings.max_speed, 1000.0 / max(1, ms))
        return self.speed

    def broadcast_state(self) -> None:
        for s in self.sessions:
            s.broadcast(m.dump(s.state_message()))

    def step(self, n: int, grain: str) -> bool:
        """``n`` steps of every member; False when none of them could move."""
        stream = n <= MAX_STREAMED_STEPS
        moved = False
        for s in self.sessions:
            last = None
            for _ in range(n):
                res = s.timeline.forward(grain)
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
                    err = (translate(exc).message_model() if isinstance(exc, LimitError)
                           else m.Error(message=f"internal error: {exc!r}"))
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
        self, scenario: Scenario, machine: Machine | None, preset: str | None, origin: str
    ) -> Session:
        if machine is None:
            try:
                machine = Machine(Kernel(scenario.kernel, scenario.sysfs, record=True))
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
            machine = session.timeline.machine_at(step)
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
                sess.publish(sess.timeline.act(("inject", validate_op(sess.kernel, msg.op))))
        elif isinstance(msg, m.KnobMsg):
            for sess in group.sessions:
                sess.publish(sess.timeline.act(("knob", msg.knob, msg.value)))
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
