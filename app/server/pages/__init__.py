"""HTML pages and htmx partials of the dashboard (presentation only).

DOC: Overview

The pages render Jinja2 templates from ``templates/`` and go through the
:class:`~app.server.sessions.SessionManager` and :meth:`~app.server.session.Session.control`
for everything else, exactly like the REST routes: they never compute KSM state.

- :mod:`app.server.pages.full`: the full pages (``/``, ``/session``, ``/compare``, the
  scenario upload) and shared links;
- :mod:`app.server.pages.partials`: the htmx partials (``/ui/sessions/{sid}/...``), which
  target themselves: controls, knobs and event injection (validation errors come back
  inline, with a 4xx status that htmx is told to swap), the page inspector and a process's
  ``ksm_stat``;
- :mod:`app.server.pages.forms`: form parsing, each button or field as a command of
  :mod:`app.server.messages`;
- :mod:`app.server.pages.render`: the templates, their base context and the lookups both
  share.

``router`` holds every route of the package. The page JavaScript (``static/js/``) draws the
websocket stream described in ``docs/protocol.md``.
"""

from __future__ import annotations

from fastapi import APIRouter

from . import full, partials

router = APIRouter(include_in_schema=False)
router.include_router(full.router)
router.include_router(partials.router)

__all__ = ["router"]
