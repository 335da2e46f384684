"""Sessions that advance in lockstep, and the play loop that paces them.

A session alone is a group of one; a compare pair is a group of two. Every control reaches
every member; :meth:`Group.step` moves each member, :meth:`Group.play` runs a task that steps
at the group's rate (batches per second, or real time from ``sleep_millisecs``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

from . import messages as m
from .errors import translate
from .timeline import LimitError

if TYPE_CHECKING:
    from .session import Session
    from .sessions import SessionManager

log = logging.getLogger("ksmlab.server")

#: a `step` with more steps than this sends one snapshot at the end instead of deltas
MAX_STREAMED_STEPS = 8


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
