"""Broadcast fast path: one serialised websocket frame written to many sockets.

A playing session sends the same text to every viewer. Through ASGI each send encodes the
text and builds the frame again, per viewer; with 1,000 viewers that dominates the server's
time. When uvicorn runs its websockets-sansio protocol without extensions (the app disables
permessage-deflate), a server-to-client text frame is the same bytes for every viewer, so
the session builds it once (:func:`text_frame`) and :class:`RawWriter` writes it to each
transport that is open and not paused for flow control. Anything else (another websocket
implementation, a paused transport, a viewer with frames queued) takes the ordinary
``await websocket.send_text`` path, in order.
"""

from __future__ import annotations

import struct
from typing import Any


def text_frame(text: str) -> bytes:
    """An unmasked, unfragmented RFC 6455 text frame (server to client)."""
    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + payload


class RawWriter:
    """Direct writes to a uvicorn websockets-sansio connection (see the module docstring)."""

    __slots__ = ("proto", "open_state")

    def __init__(self, proto: Any, open_state: Any):
        self.proto = proto
        self.open_state = open_state

    @classmethod
    def of(cls, proto: Any) -> RawWriter | None:
        if type(proto).__name__ != "WebSocketsSansIOProtocol":
            return None
        conn = getattr(proto, "conn", None)
        needed = ("transport", "writable", "disconnected", "close_sent")
        if conn is None or conn.extensions or not all(hasattr(proto, a) for a in needed):
            return None
        from websockets.protocol import State

        return cls(proto, State.OPEN)

    def ready(self) -> bool:
        p = self.proto
        return bool(
            p.writable.is_set()
            and not p.disconnected
            and not p.close_sent
            and p.conn.state is self.open_state
            and not p.transport.is_closing()
        )

    def write(self, frame: bytes) -> None:
        self.proto.transport.write(frame)
