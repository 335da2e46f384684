"""The kernel-facing side of KSM Lab (standard library only).

This package talks to the real kernel: it must also run inside a bare qemu guest that has
nothing but CPython's standard library (Debian's python3.11), on kernels 6.1 to 6.18.

- :mod:`.host`: reading the host, read-only (the live view imports it too): ``/proc``
  (:mod:`.host.procfs`), which frames are KSM pages (:mod:`.host.frames`), every sysfs file
  and the KSM users (:mod:`.host.ksm`), the live page map (:mod:`.host.pagemap`).
- :mod:`.sysfs`: ``/sys/kernel/mm/ksm`` (knobs and counters; the root is a parameter).
- :mod:`.guard`: saving and restoring every writable knob (memory + state file), the host
  lock, the refusal checks (root, writable sysfs, no other KSM user).
- :mod:`.libc`: ctypes wrappers for mmap, madvise and prctl.
- :mod:`.worker`: the worker processes that carry a scenario's processes.
- :mod:`.session`: the host session of a replay (refusals, lock, saved knobs, signals,
  workers, the probe); :mod:`.ops`: one scenario step by step; :mod:`.observe`: what a
  checkpoint records.
- :mod:`.replayer`: the command line that replays a ``ksm-scenario/1`` file and records a
  ``ksm-trace/1`` trace (``python3 -m app.kernel.replayer SCENARIO.json --trace OUT.json``).
- :mod:`.fuzz`: random scenarios, differential testing against the simulator, shrinking.
- :mod:`.cli`: the ``ksmlab replay`` and ``ksmlab fuzz`` subcommands.

``qemu*.py`` and ``guest*.py`` run the same replayer inside a guest booted on an older
kernel (issue 9).
"""
