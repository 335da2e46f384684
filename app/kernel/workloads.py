"""Real workloads for KSM measurements on this host: areas of known pages, and copies of a
real program started under ``prctl(PR_SET_MEMORY_MERGE)``.

- :class:`Area`: one private anonymous mapping of this process (``MADV_NOHUGEPAGE``) filled
  with known pages (unique, in identical pairs or fours, or zero-filled) and made
  mergeable: what ``ksmlab calibrate`` measures ksmd's costs on.
- :class:`ProgramCopies`: ``n`` Python interpreters that set ``PR_SET_MEMORY_MERGE`` on
  themselves first, import a large library, report ready on stdout and sleep until their
  stdin closes: what ``ksmlab whatif-check --workload python`` predicts and measures. They
  are killed in ``stop()`` (and by ``PR_SET_PDEATHSIG`` if this process dies).

Standard library only.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

PAGE = mmap.PAGESIZE
MADV_MERGEABLE = getattr(mmap, "MADV_MERGEABLE", 12)
MADV_UNMERGEABLE = getattr(mmap, "MADV_UNMERGEABLE", 13)
MADV_NOHUGEPAGE = getattr(mmap, "MADV_NOHUGEPAGE", 15)


class Area:
    """``pages`` pages of private anonymous memory, filled by ``kind``:

    - ``unique``: every page different from every other page on the host;
    - ``pairs``: page ``i`` and page ``i + pages/2`` identical, nothing else alike;
    - ``quads``: pages ``i``, ``i + pages/4``, ``i + pages/2`` and ``i + 3 pages/4``
      identical, nothing else alike;
    - ``zero``: every page present and zero-filled.

    ``huge=True`` asks for transparent huge pages (``MADV_HUGEPAGE``), else none.
    """

    def __init__(self, pages: int, kind: str, huge: bool = False) -> None:
        if kind not in ("unique", "pairs", "quads", "zero"):
            raise ValueError(f"unknown area kind {kind!r}")
        if pages < 2:
            raise ValueError("an area has at least 2 pages")
        self.pages = pages
        self.kind = kind
        self.map = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        # ``huge``: transparent huge pages where the kernel gives them (MADV_HUGEPAGE)
        self.map.madvise(mmap.MADV_HUGEPAGE if huge else MADV_NOHUGEPAGE)
        stamp = (os.getpid() << 40) | (time.monotonic_ns() & ((1 << 40) - 1))
        group = {"pairs": pages // 2, "quads": pages // 4}.get(kind, pages)
        for i in range(pages):
            if kind == "zero":
                self.map[i * PAGE] = 0  # a write: a real page full of zeros
                continue
            n = i % group
            self.map[i * PAGE : (i + 1) * PAGE] = struct.pack("<QQ", stamp, n) * (PAGE // 16)
        self.map.madvise(MADV_MERGEABLE)

    def close(self) -> None:
        if not self.map.closed:
            self.map.close()

    def __enter__(self) -> Area:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


#: what each copy runs: merge-any first, then the import, then "ready" and wait for EOF
_CHILD = r"""
import ctypes, sys, os
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(67, 1, 0, 0, 0) != 0:  # PR_SET_MEMORY_MERGE
    sys.exit("prctl(PR_SET_MEMORY_MERGE) failed: errno %d" % ctypes.get_errno())
libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
for name in sys.argv[1:]:
    __import__(name)
print("ready", flush=True)
sys.stdin.read()
"""

#: libraries imported by default: large, pure-Python-heavy and installed with KSM Lab
DEFAULT_MODULES = ("plotly.graph_objects", "pydantic", "fastapi")


ADDR_NO_RANDOMIZE = 0x0040000


def _same_layout() -> None:  # pragma: no cover - runs in the child before exec
    """No address-space randomisation: copies started alike lay their heaps out alike (as
    the workers of a pre-forking server do); their pointer-filled pages can then match."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.personality(ADDR_NO_RANDOMIZE)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


@dataclass
class ProgramCopies:
    """``n`` copies of a Python interpreter importing ``modules`` under merge-any.

    ``same_layout`` (default) starts them without address randomisation and with one hash
    seed, so that identical work gives identical pages; without it almost every heap page
    holds different pointers and little merges (measured: 266 of 29 000 pages).
    """

    n: int = 4
    modules: Sequence[str] = DEFAULT_MODULES
    same_layout: bool = True
    ready_timeout_s: float = 120.0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> list[int]:
        try:
            for _ in range(self.n):
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _CHILD, *self.modules],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        env={**os.environ, "PYTHONHASHSEED": "0"} if self.same_layout else None,
                        preexec_fn=_same_layout if self.same_layout else None,
                    )
                )
            deadline = time.monotonic() + self.ready_timeout_s
            for p in self.procs:
                assert p.stdout is not None
                line = p.stdout.readline()
                if line.strip() != b"ready":
                    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
                    raise RuntimeError(f"workload copy {p.pid} did not start: {err.strip()}")
                if time.monotonic() > deadline:
                    raise RuntimeError("workload copies took too long to start")
        except BaseException:
            self.stop()
            raise
        return self.pids

    def stop(self) -> None:
        """Kill every copy this object started (by pid) and reap it."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    f.close()
        self.procs.clear()

    def __enter__(self) -> ProgramCopies:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
