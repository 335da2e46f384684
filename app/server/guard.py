"""Connection guards for uvicorn (slowloris): a header deadline and a connection cap.

uvicorn bounds idle keep-alive time but not the time a client takes to send a request's
headers, nor how many connections are open: 3,000 half-sent requests stayed open for 100 s,
and near 20,000 they used up the file descriptors. :func:`guarded_h11` makes a subclass of
uvicorn's h11 protocol that

- closes a connection that has not sent a whole request head within ``header_timeout``
  seconds (from the connection, or from the end of the previous response);
- closes a new connection at once while ``max_connections`` are open (HTTP and websocket
  connections alike; the file descriptors stay well below the process limit).

A request whose head has arrived is the application's (its body is bounded by
``BodyLimit``); a websocket is no longer this protocol's once upgraded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("ksmlab.server")


class GuardedH11Protocol(H11Protocol):
    header_timeout = 10.0
    max_connections = 4000
    _last_warning = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            now = time.monotonic()
            if now - GuardedH11Protocol._last_warning > 10:
                GuardedH11Protocol._last_warning = now
                log.warning("over %d connections: closing new ones", self.max_connections)
            transport.abort()
            return
        self._arm()

    def _arm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline)

    def _header_deadline(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not self:
            return  # closed, or upgraded to a websocket
        if self.cycle is None or self.cycle.response_complete:
            transport.close()  # no whole request head in time

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(exc)


def guarded_h11(header_timeout: float, max_connections: int) -> type[Any]:
    """A :class:`GuardedH11Protocol` with these limits (uvicorn's ``http=`` option)."""
    return type(
        "KsmlabH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )
