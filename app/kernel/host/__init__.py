"""Reading the host's KSM: the one package that knows ``/proc`` and ``/sys/kernel/mm/ksm``.

Read-only and standard library only (it runs in the qemu guests too, and the dashboard's
live view imports it). Both the kernel replayer and the live view read the host with it.

- :mod:`.procfs`: ``/proc``: the host's ``PAGE_SIZE``, the ``KPF_*`` and ``PM_*`` bits,
  :class:`~.procfs.ProcessGone`, ``ksm_stat``, maps and smaps parsers, the batched
  ``/proc/kpageflags`` reader, :class:`~.procfs.ProcFs` (the replayer's reader).
- :mod:`.frames`: which frames are KSM pages: ``KPF_KSM``, or the dirty rule checked
  against smaps' ``KSM:`` counts (``solve_ksm_frames``).
- :mod:`.ksm`: the sysfs value parser, every file of ``/sys/kernel/mm/ksm`` at once
  (``read_ksm``), the processes that use KSM (``read_procs``), the derived figures.
- :mod:`.pagemap`: one process's mergeable pages classified page by page, a window at a
  time (the live page map).

Writing knobs is not here: :mod:`app.kernel.sysfs` and :mod:`app.kernel.guard`.
"""
