"""Live view of the host's real KSM (read-only).

Nothing in this package writes to ``/sys`` or ``/proc``: it samples the files the kernel
exposes and turns them into JSON and a page.

- :mod:`.reader`: ``<sys_root>/kernel/mm/ksm`` (every file), the processes that use KSM
  (``/proc/PID/ksm_stat``, ``ksm_merging_pages``, ``comm``) and the derived figures.
  Standard library only, so the kernel replayer can share it.
- :mod:`.pagemap`: one process's mergeable VMAs (``smaps`` VmFlags ``mg``) classified page by
  page from ``/proc/PID/pagemap`` and ``/proc/kpageflags``, a window at a time. Stdlib only.
- :mod:`.settings`: ``LiveSettings`` (``KSMLAB_SYS_ROOT``, ``KSMLAB_PROC_ROOT``,
  ``KSMLAB_LIVE_INTERVAL``, ``KSMLAB_LIVE_MAX_PAGES``).
- :mod:`.models`: the pydantic models of the JSON answers and websocket messages.
- :mod:`.routes`: the FastAPI ``router`` (page, REST, websocket ``/ws/live``) and
  ``create_live_app()`` for ``ksmlab serve --live-only``.

Files that an older kernel lacks are reported as missing (``None``), never as zero.
"""
