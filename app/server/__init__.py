"""KSM Lab dashboard backend: the simulator over HTTP and websockets.

DOC: Overview

- :mod:`app.server.app`: ``create_app(settings)``, the FastAPI application (routers, static
  files, vendored JS, the pages router and the live view when present).
- :mod:`app.server.timeline`: a session's timeline: recorded ``sim.stepper`` actions,
  branches, sparse ``sim.stepper.Stepper`` checkpoints, deterministic replay.
- :mod:`app.server.encode`: snapshots and compact deltas of a kernel (``docs/protocol.md``).
- :mod:`app.server.messages`: the websocket messages, pydantic models tagged by ``type``;
  its commands are the one command model (REST bodies, forms and links build them too).
- :mod:`app.server.sessions`: the :class:`SessionManager` (finds, creates, deletes, forks);
  :mod:`app.server.session`: one session; :mod:`app.server.groups`: lockstep groups, which
  apply every command to each member, and the play loop (``sessions -> session -> groups``).
- :mod:`app.server.pages`: the HTML pages, htmx partials and form parsing.
- :mod:`app.server.sources`: scenarios from presets or uploads, size limits.
- :mod:`app.server.errors`: simulator and limit errors as 4xx / ``error`` messages.
- :mod:`app.server.viewers`: one websocket viewer with its bounded send queue;
  :mod:`app.server.fastsend`: one encoded frame written to many sockets.
- :mod:`app.server.routes`: thin REST and websocket handlers.

Dependency direction: ``app.server -> sim``; ``sim`` never imports this package.
"""
