"""One websocket viewer of a session, with a bounded send queue.

Each step is serialised once by the session and handed to every viewer with :meth:`push`.
A viewer's queue holds at most ``maxlen`` frames (and ``max_bytes`` characters): when a push
finds it full (the browser reads slower than the session plays), the queued frames are
dropped and the viewer is marked for a resync; its sender then sends one fresh snapshot of
the session's current step (built once per step and shared by every resyncing viewer).
Nothing else waits for a slow viewer.

Memory is bounded independently of the number of viewers (issue 15): frames are shared
strings (one per step, one snapshot per step for every resyncing viewer), and what a viewer
holds of its own is what its socket has not taken yet, the transport's write buffer. Every
frame sent is charged to one :class:`ByteBudget` shared by all viewers of the server
(``viewer_bytes_total``): a viewer waits for room before it sends, and its charge is
released once its transport has drained. A viewer whose transport does not drain for
``viewer_stall_seconds`` (it does not read), or that waits that long for room, is dropped
(its connection aborted, freeing its buffer). So the viewers' own memory is at most
``viewer_bytes_total`` plus one frame, whatever their number.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from .fastsend import RawWriter, text_frame


class _Socket(Protocol):
    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class ByteBudget:
    """Bytes sent to viewers and not yet drained from their transports, for every viewer
    of a server (see the module docstring)."""

    def __init__(self, total: int, stall_seconds: float):
        self.total = total
        self.stall_seconds = stall_seconds
        self.used = 0
        self.peak = 0
        self.dropped = 0
        self._room = asyncio.Event()

    def charge(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        self.used = max(0, self.used - n)
        if n:
            self._room.set()

    async def reserve(self, n: int) -> bool:
        """Charge ``n`` bytes once there is room (a frame over the whole budget goes alone);
        False after ``stall_seconds`` without room."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stall_seconds
        while self.used and self.used + n > self.total:
            self._room.clear()
            left = deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), min(left, 0.25))
        self.charge(n)
        return True


class _Transport(Protocol):
    def get_write_buffer_size(self) -> int: ...

    def abort(self) -> None: ...


class Viewer:
    """A websocket and its bounded queue of serialised frames."""

    def __init__(
        self,
        ws: _Socket,
        maxlen: int,
        resync: Callable[[], list[str]],
        raw: RawWriter | None = None,
        max_bytes: int | None = None,
        budget: ByteBudget | None = None,
        transport: _Transport | None = None,
    ):
        self.ws = ws
        self.budget = budget
        self.transport = transport
        self.charged = 0
        self.stalled_since: float | None = None
        self.dropped = False
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
        #: what this viewer shows of a large session (app.server.overview.Viewport; None:
        #: the default overview)
        self.viewport: object | None = None
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
            data = wire if wire is not None else text_frame(frame)
            self.raw.write(data)
            self.sent += 1
            self.direct += 1
            if self.transport is not None and self._buffered() == 0:
                return  # the socket took it all: nothing to charge, no task to wake
            self._charge(len(data))
            self._wake.set()  # the sender watches the transport drain
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

    def resync(self) -> None:
        """Drop what is queued; the sender sends a fresh snapshot when it can."""
        if self.closing:
            return
        self.queue.clear()
        self.need_resync = True
        self._wake.set()

    def reset(self, frames: list[str]) -> None:
        """Replace whatever is queued (a snapshot supersedes older deltas)."""
        self.queue.clear()
        self.need_resync = not frames  # none yet (the session computes): resync later
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

    # ------------------------------------------------------------ the byte budget
    def _charge(self, n: int) -> None:
        if self.budget is not None:
            self.budget.charge(n)
            self.charged += n

    def _buffered(self) -> int:
        if self.transport is None:
            return 0
        try:
            return int(self.transport.get_write_buffer_size())
        except Exception:
            return 0

    def _settle(self) -> bool:
        """Release the charge once the transport drained; False when the viewer has not
        read for ``stall_seconds`` (then it is dropped)."""
        if self.budget is None or not self.charged:
            return True
        now = time.monotonic()
        if self._buffered() == 0:
            self.budget.release(self.charged)
            self.charged = 0
            self.stalled_since = None
            return True
        if self.stalled_since is None:
            self.stalled_since = now
        return now - self.stalled_since < self.budget.stall_seconds

    def drop(self) -> None:
        """A viewer that does not read: abort its connection (freeing its buffer)."""
        if self.dropped:
            return
        self.dropped = True
        self.queue.clear()
        if self.budget is not None:
            self.budget.release(self.charged)
            self.budget.dropped += 1
            self.charged = 0
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.abort()

    async def _send(self, frame: str) -> bool:
        budget = self.budget
        if budget is None:
            await self.ws.send_text(frame)
            return True
        # wait for this viewer's socket to take what it was sent, then for room
        while self.charged and not self._settled_now():
            if not self._settle():
                return False
            await asyncio.sleep(0.02)
        size = len(frame) + 14
        if not await budget.reserve(size):
            return False
        self.charged += size
        try:
            await asyncio.wait_for(self.ws.send_text(frame), budget.stall_seconds)
        except TimeoutError:
            return False
        return True

    def _settled_now(self) -> bool:
        self._settle()
        return self.charged == 0

    async def run(self) -> None:
        """The sender: drains the queue into the socket until closed."""
        try:
            while True:
                if self.charged:  # watch the transport drain (or the viewer stall)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 0.1)
                    if not self._settle():
                        self.drop()
                        return
                else:
                    await self._wake.wait()
                self._wake.clear()
                while self.queue or self.need_resync:
                    if self.need_resync:
                        self.queue.clear()
                        frames = self._resync_frames()
                        if not frames:  # the session computes: ask again shortly
                            await asyncio.sleep(0.05)
                            continue
                        self.need_resync = False
                        self.queue.extend(frames)
                    frame = self.queue.popleft()
                    self.sending = True
                    try:
                        ok = await self._send(frame)
                    finally:
                        self.sending = False
                    if not ok:
                        self.drop()
                        return
                    self.sent += 1
                if self.closing:
                    with contextlib.suppress(Exception):
                        await self.ws.close(1000)
                    return
        except Exception:  # the peer went away: the receive loop sees the disconnect
            return
        finally:
            if self.budget is not None and self.charged:
                self.budget.release(self.charged)
                self.charged = 0

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
            "charged": self.charged,
        }
