"""Live view of the host's real KSM (read-only).

Nothing in this package writes to ``/sys`` or ``/proc``: it samples the files the kernel
exposes and turns them into JSON and a page.

The host is read by :mod:`app.kernel.host` (standard library only, shared with the kernel
replayer): :mod:`app.kernel.host.ksm` (every file of ``<sys_root>/kernel/mm/ksm``, the
processes that use KSM, the derived figures) and :mod:`app.kernel.host.pagemap` (one
process's mergeable pages classified page by page, a window at a time). This package keeps:

- :mod:`.settings`: ``LiveSettings`` (``KSMLAB_SYS_ROOT``, ``KSMLAB_PROC_ROOT``,
  ``KSMLAB_LIVE_INTERVAL``, ``KSMLAB_LIVE_MAX_PAGES``).
- :mod:`.models`: the pydantic models of the JSON answers and websocket messages.
- :mod:`.routes`: the FastAPI ``router`` (page, REST, websocket ``/ws/live``) and
  ``create_live_app()`` for ``ksmlab serve --live-only``.

Files that an older kernel lacks are reported as missing (``None``), never as zero.
"""
