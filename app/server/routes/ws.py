"""``/ws/sessions/{id}``: a snapshot on connect, then deltas; controls as client messages.

A client message is a command (:data:`app.server.messages.Command`, applied with
:meth:`~app.server.session.Session.control`, refused for a viewer without the presenter's
token), ``ack``: the viewer reports the last step it drew, kept as its ``acked`` in
``GET /api/sessions/{id}/viewers`` (how far each browser's drawing lags the session), or
``viewport``: what the viewer shows of a large session (app.server.overview); it is answered
with a snapshot of that viewport, then deltas for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError

from .. import messages as m
from ..errors import ApiError, translate
from ..fastsend import RawWriter
from ..security import control_refusal
from ..viewers import Viewer

router = APIRouter()
log = logging.getLogger("ksmlab.server")


@router.websocket("/ws/sessions/{session_id}")
async def watch_session(ws: WebSocket, session_id: str) -> None:
    manager = ws.app.state.manager
    settings = manager.settings
    await ws.accept()
    session = manager.sessions.get(session_id)
    if session is None:
        await ws.send_text(m.dump(m.Error(message=f"no session {session_id!r}", field="session")))
        await ws.close(4404)
        return
    if len(session.viewers) >= settings.max_viewers:
        await ws.send_text(
            m.dump(
                m.Error(
                    message=f"at most {settings.max_viewers} viewers per session", field="viewers"
                )
            )
        )
        await ws.close(4429)
        return
    refusal = control_refusal(settings, ws)  # None: this viewer may control
    proto = ws.scope.get("ksmlab.ws_protocol")
    raw = RawWriter.of(proto)
    viewer = Viewer(
        ws,
        settings.ws_queue,
        lambda: session.resync_frames(viewer),
        raw,
        settings.ws_queue_bytes,
        budget=manager.viewer_budget,
        transport=getattr(proto, "transport", None),
    )
    await session.ensure_snapshot(viewer)
    viewer.reset(session.resync_frames(viewer))
    session.viewers.add(viewer)
    session.touch()
    viewer.task = asyncio.get_running_loop().create_task(viewer.run())
    try:
        while True:
            frame = await ws.receive()
            if frame["type"] == "websocket.disconnect":
                break
            data = frame.get("text")
            if data is None:
                data = frame.get("bytes") or b""
            if len(data) > settings.ws_max_message_bytes:
                viewer.push(
                    m.dump(
                        m.Error(
                            message=f"message larger than {settings.ws_max_message_bytes} bytes",
                            field="message",
                        )
                    )
                )
                continue
            try:
                msg = m.parse_client_message(data)
            except ValidationError as exc:
                viewer.push(m.dump(translate(exc).message_model()))
                continue
            except (ValueError, RecursionError):
                viewer.push(m.dump(m.Error(message="not a message (invalid JSON)", field="type")))
                continue
            if manager.sessions.get(session_id) is not session:
                break
            if isinstance(msg, m.AckMsg):  # a viewer's report, not a control: never refused
                viewer.acked = msg.step
                session.touch()
                continue
            if isinstance(msg, m.ViewportMsg):  # what this viewer shows: never refused
                try:
                    viewer.viewport = session.check_viewport(msg)
                    await session.ensure_snapshot(viewer)
                    viewer.reset(session.resync_frames(viewer))
                except ApiError as exc:
                    viewer.push(m.dump(exc.message_model()))
                continue
            if refusal is not None:
                viewer.push(m.dump(refusal.message_model()))
                continue
            try:
                await session.run_control(msg)
            except ApiError as exc:
                viewer.push(m.dump(exc.message_model()))
            except Exception:  # a bug: say so, keep the socket and the server
                log.exception("control %s on session %s failed", msg.type, session_id)
                viewer.push(m.dump(m.Error(message="internal error (logged)", field="type")))
    except Exception:  # the peer vanished mid-frame
        pass
    finally:
        session.viewers.discard(viewer)
        session.touch()
        if viewer.task is not None and not viewer.closing:
            viewer.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await viewer.task
