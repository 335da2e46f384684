"""One websocket viewer of a session, with a bounded send queue.

Each step is serialised once by the session and handed to every viewer with :meth:`push`.
A viewer's queue holds at most ``maxlen`` frames (and ``max_bytes`` characters): when a push
finds it full (the browser reads slower than the session plays), the queued frames are
dropped and the viewer is marked for a resync; its sender then sends one fresh snapshot of
the session's current step (built once per step and shared by every resyncing viewer).
Nothing else waits for a slow viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Protocol

from .fastsend import RawWriter, text_frame


class _Socket(Protocol):
    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class Viewer:
    """A websocket and its bounded queue of serialised frames."""

    def __init__(
        self,
        ws: _Socket,
        maxlen: int,
        resync: Callable[[], list[str]],
        raw: RawWriter | None = None,
        max_bytes: int | None = None,
    ):
        self.ws = ws
        self.max_bytes = max_bytes
        self.raw = raw
        self.sending = False
        self.maxlen = maxlen
        self.queue: deque[str] = deque()
        self._resync_frames = resync
        self._wake = asyncio.Event()
        self.need_resync = False
        self.resyncs = 0
        self.sent = 0
        self.direct = 0
        self.acked = -1
        self.max_queue = 0
        self.closing = False
        self.task: asyncio.Task[None] | None = None

    def push(self, frame: str, wire: bytes | None = None) -> None:
        """Send or queue one frame; on overflow drop the queue and resync later.

        ``wire``: the frame already encoded by :func:`~app.server.fastsend.text_frame`,
        written directly when nothing is queued and the transport takes it.
        """
        if self.need_resync:
            return
        if self.raw is not None and not self.queue and not self.sending and self.raw.ready():
            self.raw.write(wire if wire is not None else text_frame(frame))
            self.sent += 1
            self.direct += 1
            return
        if len(self.queue) >= self.maxlen or self._over_bytes(len(frame)):
            self.queue.clear()
            self.need_resync = True
            self.resyncs += 1
        else:
            self.queue.append(frame)
            self.max_queue = max(self.max_queue, len(self.queue))
        self._wake.set()

    def _over_bytes(self, extra: int) -> bool:
        """Would queueing ``extra`` more characters pass ``max_bytes``? (A frame alone in the
        queue is always allowed, or a big snapshot could never be sent.)"""
        if self.max_bytes is None or not self.queue:
            return False
        return sum(map(len, self.queue)) + extra > self.max_bytes

    def reset(self, frames: list[str]) -> None:
        """Replace whatever is queued (a snapshot supersedes older deltas)."""
        self.queue.clear()
        self.need_resync = False
        self.queue.extend(frames[: self.maxlen])
        self._wake.set()

    def close_after(self, frame: str) -> None:
        """Send this frame (after what is queued, if there is room), then close."""
        if len(self.queue) >= self.maxlen or self._over_bytes(len(frame)):
            self.queue.clear()
        self.need_resync = False
        self.queue.append(frame)
        self.closing = True
        self._wake.set()

    async def run(self) -> None:
        """The sender: drains the queue into the socket until closed."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self.queue or self.need_resync:
                    if self.need_resync:
                        self.need_resync = False
                        self.queue.clear()
                        self.queue.extend(self._resync_frames())
                    frame = self.queue.popleft()
                    self.sending = True
                    try:
                        await self.ws.send_text(frame)
                    finally:
                        self.sending = False
                    self.sent += 1
                if self.closing:
                    with contextlib.suppress(Exception):
                        await self.ws.close(1000)
                    return
        except Exception:  # the peer went away: the receive loop sees the disconnect
            return

    def stats(self) -> dict[str, int]:
        return {
            "queue": len(self.queue),
            "max_queue": self.max_queue,
            "limit": self.maxlen,
            "bytes": sum(map(len, self.queue)),
            "resyncs": self.resyncs,
            "sent": self.sent,
            "direct": self.direct,
            "acked": self.acked,
        }
