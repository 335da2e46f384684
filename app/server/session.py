"""One session: a simulated machine, its timeline, its viewers, and what it shows.

:class:`Session` publishes each step to its viewers (one serialised delta, or a snapshot),
and gives the views the pages and the REST routes use: :meth:`~Session.info`,
:meth:`~Session.snapshot`, :meth:`~Session.state_view`, :meth:`~Session.page_detail`,
:meth:`~Session.trace`, :meth:`~Session.counters_csv`. :meth:`Session.control` hands a
command to the session's :class:`~app.server.groups.Group` (a group of one unless the session
is in a compare pair), which applies it to every member.

A session gets the settings it needs as :class:`SessionSettings`, not the manager:
``sessions -> session -> groups``, never back.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from typing import Any

from app.config import Settings
from sim import Kernel, SimError
from sim.scenario import Scenario
from sim.snapshot import describe, page_detail, structure
from sim.stepper import Stepper
from sim.trace import PROC_FIELDS

from . import messages as m
from .encode import Encoder
from .errors import ApiError
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
        self.events: list[m.Event] = []
        self.event_counts: dict[str, int] = {}
        self.what: dict[str, Any] = {}
        self.ts = _now_ms()
        self._snapshot: tuple[int, str] | None = None

    @property
    def kernel(self) -> Kernel:
        return self.timeline.kernel

    def pages(self) -> int:
        return sum(v.npages for mm in self.kernel.procs.values() for v in mm.vmas.values())

    def control(self, msg: m.Command) -> None:
        """Apply one command to the session's group (every member; ApiError on refusal)."""
        self.touch()
        self.group.apply(msg)

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
            "what": self.what,
            "story": t.story(),
        }

    def snapshot(self) -> m.Snapshot:
        t = self.timeline
        meta = {**self._meta(), "marks": t.marks(), "chapters": t.chapters()}
        return self.encoder.snapshot(self.kernel, meta)

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
            v = self.kernel.vma(proc, vma)
            placed = self.timeline.ksm_placed(v.uid, page)
            return page_detail(self.kernel, proc, vma, page, placed)
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
            self.summary, self.events, self.event_counts, self.what = "step 0", [], {}, {}
        else:
            d = describe(self.kernel, res.log, res.outcome)
            self.summary, self.events, self.event_counts = d.text, d.events, d.counts
            self.what = d.what
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


_STAT_FIELDS = PROC_FIELDS
