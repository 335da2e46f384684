"""One session: a simulated machine, its timeline, its viewers, and what it shows.

:class:`Session` publishes each step to its viewers (one serialised delta, or a snapshot),
and gives the views the pages and the REST routes use: :meth:`~Session.info`,
:meth:`~Session.snapshot`, :meth:`~Session.state_view`, :meth:`~Session.page_detail`,
:meth:`~Session.trace`, :meth:`~Session.counters_csv`. :meth:`Session.control` hands a
command to the session's :class:`~app.server.groups.Group` (a group of one unless the session
is in a compare pair), which applies it to every member.

A session gets the settings it needs as :class:`SessionSettings`, not the manager:
``sessions -> session -> groups``, never back.

Long simulation work runs off the event loop: :meth:`Session.run_control` (every REST
control, websocket command and link replay) takes the group's lock (commands keep their
order) and runs a command that computes (step, back, seek, inject, knob) on a worker thread
while the group is not playing. The simulator is not thread-safe, so while it runs the
session is *busy*: views answer from what was cached before (:meth:`info`, the snapshot
viewers resync to) or say 409, a synchronous :meth:`control` is refused, and frames the
worker publishes reach the viewers through the loop (``call_soon_threadsafe``, in order).
"""

from __future__ import annotations

import asyncio
import csv
import io
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from app.config import Settings
from sim import Kernel, SimError
from sim.scenario import Scenario
from sim.snapshot import describe, page_detail, structure
from sim.stepper import Stepper
from sim.trace import PROC_FIELDS

from . import messages as m
from . import overview as ov
from .encode import Encoder, StepChanges
from .errors import ApiError, shown_name
from .fastsend import text_frame
from .groups import Group, GroupSettings
from .schemas import SessionInfo
from .timeline import StepResult, Timeline
from .viewers import Viewer


@dataclass(frozen=True)
class SessionSettings:
    """The settings a session (its timeline, its group) needs; see :class:`app.config.Settings`."""

    checkpoint_interval: int
    timeline_memory_mb: int
    max_timeline_steps: int
    max_branches: int
    group: GroupSettings

    @classmethod
    def of(cls, s: Settings) -> SessionSettings:
        return cls(
            s.checkpoint_interval,
            s.timeline_memory_mb,
            s.max_timeline_steps,
            s.max_branches,
            GroupSettings.of(s),
        )


def _now_ms() -> float:
    return time.time() * 1000.0


#: the worker threads that run simulation work off the event loop (the GIL makes more
#: pointless; a group's lock keeps one command of a session running at a time)
WORKERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ksmlab-sim")
#: commands that compute (run on a worker unless the group plays)
HEAVY = (m.StepMsg, m.BackMsg, m.SeekMsg, m.InjectMsg, m.KnobMsg)
_group_locks: weakref.WeakKeyDictionary[Group[Any], asyncio.Lock] = weakref.WeakKeyDictionary()


def _busy_error() -> ApiError:
    return ApiError(409, "session", "the session is computing a step; try again in a moment")


class Session:
    """One simulated machine with its timeline and its viewers."""

    def __init__(
        self,
        settings: SessionSettings,
        sid: str,
        scenario: Scenario,
        stepper: Stepper,
        preset: str | None,
        origin: str,
    ):
        s = settings
        self.id = sid
        self.scenario = scenario
        self.preset = preset
        self.timeline = Timeline(
            scenario,
            stepper,
            interval=s.checkpoint_interval,
            memory_bytes=s.timeline_memory_mb << 20,
            max_steps=s.max_timeline_steps,
            max_branches=s.max_branches,
        )
        self.encoder = Encoder(sid)
        self.viewers: set[Viewer] = set()
        self.group: Group[Session] = Group(settings.group, [self])
        self.last_active = time.monotonic()
        self.version = 0
        self.summary = origin
        #: the scenario's sysfs knobs this kernel lacks (the kernel skipped them), as shown
        self.skipped_knobs = [shown_name(k) for k in stepper.kernel.skipped_knobs[:16]]
        self.events: list[m.Event] = []
        self.event_counts: dict[str, int] = {}
        self.what: dict[str, Any] = {}
        self.ts = _now_ms()
        self._snapshot: tuple[int, str] | None = None
        #: a large session's snapshots by viewport, for the current version only
        self._views: dict[ov.Viewport, str] = {}
        self._views_version = -1
        #: the recipe's origin (preset, scenario or fork) and hash (app.server.store)
        self.recipe_origin: dict[str, Any] = {}
        self.recipe = ""
        self.recipe_key: tuple[int, int, int] | None = None
        self.do_cache: tuple[tuple[int, int, int], str | None] | None = None
        self.recorder: Callable[[Session], str] | None = None
        self.link_state: tuple[str, int] | None = None
        #: a worker thread computes for this session (see the module docstring)
        self.busy = False
        self._info: SessionInfo | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = threading.get_ident()

    @property
    def kernel(self) -> Kernel:
        return self.timeline.kernel

    def pages(self) -> int:
        return sum(v.npages for mm in self.kernel.procs.values() for v in mm.vmas.values())

    def _off_loop(self) -> bool:
        return threading.get_ident() != self._loop_thread

    def check_idle(self) -> None:
        """409 while a worker computes for this session (its state is in flux)."""
        if self.busy and not self._off_loop():
            raise _busy_error()

    async def run_control(self, msg: m.Command) -> None:
        """:meth:`control`, off the event loop when it computes (see the module docstring);
        then the session's recipe is recorded."""
        group = self.group
        lock = _group_locks.setdefault(group, asyncio.Lock())
        async with lock:
            members = list(group.sessions)
            if isinstance(msg, HEAVY) and not group.playing:
                loop = asyncio.get_running_loop()
                for s in members:
                    s._info = s.info()
                    s._loop = loop
                    s.busy = True
                try:
                    await loop.run_in_executor(WORKERS, self._control, msg)
                finally:
                    for s in members:
                        s.busy = False
                        s._info = None
            else:
                self.control(msg)
            for s in group.sessions:
                if s.recorder is not None:
                    s.recorder(s)

    async def ensure_snapshot(self, viewer: Viewer | None = None) -> None:
        """Encode the current step's snapshot (for this viewer's viewport) on a worker thread
        if it is not cached (a 1M-page snapshot takes a quarter of a second), unless the
        group plays (then the play loop owns the kernel, on the loop)."""
        group = self.group
        vp = self.viewport_of(viewer)
        if vp is not None:
            cached = self._views_version == self.version and vp in self._views
        else:
            cached = self._snapshot is not None and self._snapshot[0] == self.version
        if group.playing or cached:
            return
        lock = _group_locks.setdefault(group, asyncio.Lock())
        async with lock:
            if group.playing:
                return
            await asyncio.get_running_loop().run_in_executor(WORKERS, self.snapshot_text, vp)

    def control(self, msg: m.Command) -> None:
        """Apply one command to the session's group (every member; ApiError on refusal)."""
        if self.busy and not self._off_loop():
            raise _busy_error()
        self._control(msg)
        for s in self.group.sessions:
            if s.recorder is not None and not self._off_loop():
                s.recorder(s)

    def _control(self, msg: m.Command) -> None:
        self.touch()
        try:
            self.group.apply(msg)
        except (ValueError, OverflowError, RecursionError) as exc:
            # an input the simulator cannot take (an integer of over 4,300 digits, ...)
            field = "value" if isinstance(msg, m.KnobMsg) else "op"
            raise ApiError(422, field, f"cannot use this value: {str(exc)[:120]}") from None

    # ------------------------------------------------------------------ views
    def info(self) -> SessionInfo:
        if self.busy and self._info is not None and not self._off_loop():
            return self._info
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
            skipped_knobs=self.skipped_knobs,
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
            "what": self.what,
            "story": t.story(),
        }

    def big(self) -> bool:
        """More pages than whole snapshots carry: viewers get an overview (app.server.overview)."""
        return self.pages() > ov.DETAIL_MAX_PAGES

    def viewport_of(self, viewer: Viewer | None) -> ov.Viewport | None:
        """The viewport a viewer is sent (None: the whole session, page by page)."""
        if not self.big():
            return None
        vp = viewer.viewport if viewer is not None else None
        if isinstance(vp, ov.Viewport):
            sizes = self.encoder.lane_sizes() or None
            if sizes is None or ov.min_bucket(sizes.values()) <= vp.bucket:
                return vp
        return ov.Viewport(ov.default_bucket(self.pages()))

    def check_viewport(self, msg: m.ViewportMsg) -> ov.Viewport:
        """The viewport a ``viewport`` message asks for (ApiError naming the field)."""
        sizes = {v.uid: v.npages for mm in self.kernel.procs.values() for v in mm.vmas.values()}
        least = ov.min_bucket(sizes.values())
        if self.big() and msg.bucket < least:
            raise ApiError(
                422, "bucket", f"at least {least} pages per bucket for this session's size"
            )
        for uid, _lo, _hi in msg.detail:
            if uid not in sizes:
                raise ApiError(422, "detail", f"no mapping with uid {uid}")
        return ov.Viewport(
            msg.bucket, tuple((u, lo, min(hi, sizes[u])) for u, lo, hi in msg.detail)
        )

    def snapshot(self, viewport: ov.Viewport | None = None) -> m.Snapshot:
        t = self.timeline
        meta = {**self._meta(), "marks": t.marks(), "chapters": t.chapters()}
        if viewport is None and self.big():
            viewport = self.viewport_of(None)
        snap = self.encoder.snapshot(
            self.kernel, meta, viewport, sync=self.encoder.version != self.version
        )
        self.encoder.version = self.version
        return snap

    def snapshot_text(self, viewport: ov.Viewport | None = None) -> str:
        if viewport is None and self.big():
            viewport = self.viewport_of(None)
        if viewport is not None:
            return self._view_text(viewport)
        if self.busy and not self._off_loop():
            if self._snapshot is None:
                raise _busy_error()
            return self._snapshot[1]  # an earlier step, whole (never a half-computed one)
        if self._snapshot is None or self._snapshot[0] != self.version:
            self._snapshot = (self.version, m.dump(self.snapshot()))
        return self._snapshot[1]

    def _view_text(self, viewport: ov.Viewport) -> str:
        if self.busy and not self._off_loop():
            text = self._views.get(viewport)
            if text is None:
                raise _busy_error()
            return text  # an earlier step, whole
        if self._views_version != self.version:
            self._views = {}
            self._views_version = self.version
        text = self._views.get(viewport)
        if text is None:
            if len(self._views) >= 64:
                self._views.clear()
            text = self._views[viewport] = m.dump(self.snapshot(viewport))
        return text

    def state_message(self) -> m.State:
        return self._state_of(self.info())

    def _state_of(self, i: SessionInfo) -> m.State:
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
        self.check_idle()
        return structure(self.kernel)

    def page_detail(self, proc: str, vma: str, page: int) -> dict[str, Any]:
        self.check_idle()
        try:
            v = self.kernel.vma(proc, vma)
            placed = self.timeline.ksm_placed(v.uid, page)
            return page_detail(self.kernel, proc, vma, page, placed)
        except (SimError, KeyError) as exc:
            raise ApiError(404, "page", str(exc).strip("'")) from None

    def trace(self) -> dict[str, Any]:
        self.check_idle()
        cps = list(self.timeline.trace_checkpoints())
        cps.append(self.kernel.checkpoint(f"step {self.timeline.step}"))
        return {
            "format": "ksm-trace/1",
            "scenario": self.scenario.name,
            "source": f"ksmlab-sim {self.kernel.version}",
            "checkpoints": cps,
        }

    def counters_csv(self) -> str:
        self.check_idle()
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
        if self._off_loop() and self._loop is not None:  # from a worker: through the loop
            self._loop.call_soon_threadsafe(self._broadcast, frame)
        else:
            self._broadcast(frame)

    def _broadcast(self, frame: str) -> None:
        wire = text_frame(frame)
        for v in list(self.viewers):
            v.push(frame, wire)

    def _broadcast_views(self, frames: dict[ov.Viewport | None, tuple[str, bytes]]) -> None:
        """A large session's step: each viewer gets the delta of its viewport (encoded once
        per distinct viewport); a viewer whose viewport changed meanwhile resyncs."""
        for v in list(self.viewers):
            hit = frames.get(self.viewport_of(v))
            if hit is None:
                v.resync()
            else:
                v.push(*hit)

    def broadcast_snapshot(self) -> None:
        if self.big():
            # encode here (a worker, or the play loop) what the viewers resync to: the first
            # syncs the mirror (a pass over every page), the others read the mirror
            for vp in {self.viewport_of(v) for v in list(self.viewers)} or {None}:
                self.snapshot_text(vp)
            if self._off_loop() and self._loop is not None:
                self._loop.call_soon_threadsafe(self._resync_all)
            else:
                self._resync_all()
            return
        frames = [self.snapshot_text(), m.dump(self.state_message())]
        if self._off_loop() and self._loop is not None:
            self._loop.call_soon_threadsafe(self._reset_viewers, frames)
        else:
            self._reset_viewers(frames)

    def _resync_all(self) -> None:
        for v in list(self.viewers):
            v.resync()

    def _reset_viewers(self, frames: list[str]) -> None:
        for v in list(self.viewers):
            v.reset(frames)

    def publish(self, res: StepResult | None, stream: bool = True) -> None:
        """Record what the last step did; send its delta (or a snapshot) to every viewer."""
        self.version += 1
        self.ts = _now_ms()
        if res is None:
            self.summary, self.events, self.event_counts, self.what = "step 0", [], {}, {}
        else:
            d = describe(self.kernel, res.log, res.outcome)
            self.summary, self.events, self.event_counts = d.text, d.events, d.counts
            self.what = d.what
        if not stream:
            return
        if self.encoder.version != self.version - 1:  # the mirror missed steps: resync
            self.encoder.version = -1
            self.broadcast_snapshot()
            return
        ch = self.encoder.changes(self.kernel, res.log if res else None)
        if ch is None:
            self.encoder.version = -1
            self.broadcast_snapshot()
            return
        self.encoder.version = self.version
        meta = self._meta()
        if not self.big():
            self.broadcast(m.dump(self.encoder.encode(ch, meta, None)))
            return
        self._publish_views(ch, meta)

    def _publish_views(self, ch: StepChanges, meta: dict[str, Any]) -> None:
        if not self.viewers:
            return
        frames: dict[ov.Viewport | None, tuple[str, bytes]] = {}
        for v in list(self.viewers):
            vp = self.viewport_of(v)
            if vp not in frames:
                text = m.dump(self.encoder.encode(ch, meta, vp))
                frames[vp] = (text, text_frame(text))
        if self._off_loop() and self._loop is not None:
            self._loop.call_soon_threadsafe(self._broadcast_views, frames)
        else:
            self._broadcast_views(frames)

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def resync_frames(self, viewer: Viewer | None = None) -> list[str]:
        if self.busy and not self._off_loop():
            return []  # the viewer resyncs once the worker is done (deltas stay in order)
        return [self.snapshot_text(self.viewport_of(viewer)), m.dump(self.state_message())]

    def snapshot_frame(self) -> str:
        """The current snapshot, shared by every viewer that resyncs at this step."""
        return self.snapshot_text()

    def shutdown(self) -> None:
        """The server stops: nothing to flush (recipes are committed as they change)."""
        self.busy = False


_STAT_FIELDS = PROC_FIELDS
