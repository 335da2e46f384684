"""The simulated kernel: one object per simulated machine.

:class:`Kernel` composes the layers (state, stable tree, scanner, process operations,
knobs) and adds what the outside sees: counters, ``/proc/PID/ksm_stat``, page tokens,
checkpoints in the ``ksm-trace/1`` shape, scenario steps, ksmd stepping at three grains
(one page, one batch of ``pages_to_scan`` pages, one full pass), cloning for timelines and
the change record of the last step.
"""

from __future__ import annotations

import copy
from typing import Any

from .changes import ChangeLog
from .errors import OpError
from .knobs import KnobsMixin
from .mm import ZERO_PFN, Vma
from .profiles import get_profile
from .scenario import Step

PAGE_SIZE = 4096
RMAP_ITEM_SIZE = 64
#: scenario-format.md, "The clock": consecutive passes of a ``scan`` step start 200 ms apart
PASS_INTERVAL_MS = 200


class Kernel(KnobsMixin):
    """A simulated Linux machine with KSM, for one kernel profile ("6.18", "6.12", "6.5", "6.1").

    ``sysfs`` gives initial knob values (knobs the kernel lacks are skipped and listed in
    :attr:`skipped_knobs`). ``record=True`` keeps a :class:`ChangeLog` of every step.
    """

    def __init__(
        self, kernel: str = "6.18", sysfs: dict[str, Any] | None = None, record: bool = False
    ):
        self._init_state(get_profile(kernel))
        self.log = ChangeLog() if record else None
        self.skipped_knobs = self._init_knobs(sysfs or {})
        if self.log is not None:
            self.log.clear()

    @property
    def version(self) -> str:
        return self.profile.version

    # ------------------------------------------------------------- stepping
    def scan_page(self) -> int:
        """ksmd handles one page (a batch of one). Returns pages handed over (0 or 1)."""
        return self._ksm_do_scan(1)

    def scan_batch(self) -> int:
        """One ksmd batch: ``ksm_do_scan(pages_to_scan)``; it stops early at a pass end."""
        return self._ksm_do_scan(self.knobs["pages_to_scan"])

    def scan_pass(self) -> bool:
        """Run ksmd until the current pass (or, between passes, the next one) completes.

        Returns False when no mm is registered (no pass can run, full_scans stays).
        """
        start = self.seqnr
        while True:
            if not self.can_scan:
                return False
            self._ksm_do_scan(None)
            if self.seqnr != start or self.cursor is None:
                return self.seqnr != start

    def scan(self, passes: int) -> int:
        """The scenario's ``scan``: ``passes`` full passes 200 ms apart, then ksmd stops."""
        done = 0
        self.start_scan()
        for _ in range(passes):
            if not self.scan_pass():
                break
            done += 1
            self.advance_clock(PASS_INTERVAL_MS)
        self.stop_scan()
        return done

    def start_scan(self) -> None:
        """ksmd starts for a scenario ``scan`` (run=1, set directly: no sysfs write checks)."""
        self.knobs["run"] = 1

    def stop_scan(self) -> None:
        """ksmd stops at the end of a scenario ``scan`` (run=0)."""
        self.knobs["run"] = 0

    @property
    def can_scan(self) -> bool:
        """ksmd has something to scan: an mm registered, or a pass in progress."""
        return bool(self.slots) or self.cursor is not None

    def advance_clock(self, ms: int) -> None:
        """Let ``ms`` milliseconds pass on the clock the prune timer reads (``clock_ms``)."""
        self.clock_ms += ms

    @property
    def ksmd_should_run(self) -> bool:
        """ksmd_should_run: run=1 and at least one mm registered."""
        return self.knobs["run"] == 1 and bool(self.slots)

    # ---------------------------------------------------------------- steps
    def apply(self, step: Step) -> None:
        """Apply one scenario step (``checkpoint`` does nothing here)."""
        op = step.op
        if op == "spawn":
            self.spawn(_s(step.proc))
        elif op == "fork":
            self.fork(_s(step.proc), _s(step.child))
        elif op == "exit":
            self.exit(_s(step.proc))
        elif op == "mmap":
            self.mmap(_s(step.proc), _s(step.vma), step.count or 0)
        elif op == "munmap":
            self.munmap(_s(step.proc), _s(step.vma))
        elif op == "write":
            self.write(_s(step.proc), _s(step.vma), step.pages, _s(step.content))
        elif op == "read":
            self.read(_s(step.proc), _s(step.vma), step.pages)
        elif op == "madvise":
            self.madvise(_s(step.proc), _s(step.vma), step.pages, _s(step.advice))
        elif op == "prctl":
            self.prctl(_s(step.proc), int(step.value))
        elif op == "sysfs":
            self.sysfs_write(_s(step.knob), step.value)
        elif op == "scan":
            self.scan(step.passes or 0)
        elif op == "checkpoint":
            pass
        else:
            raise OpError(f"unknown op {op!r}", "op")

    # ------------------------------------------------------------- counters
    def global_counters(self) -> dict[str, int | None]:
        """Every global counter of ``/sys/kernel/mm/ksm`` (None where the kernel lacks it)."""
        p = self.profile
        volatile = self.ksm_rmap_items - self.pages_shared - self.pages_sharing
        volatile -= self.pages_unshared
        zero = self.ksm_zero_pages if p.zero_page_series else 0
        profit = (self.pages_sharing + zero) * PAGE_SIZE - self.ksm_rmap_items * RMAP_ITEM_SIZE
        values: dict[str, int | None] = {
            "pages_shared": self.pages_shared,
            "pages_sharing": self.pages_sharing,
            "pages_unshared": self.pages_unshared,
            "pages_volatile": max(0, volatile),
            "ksm_zero_pages": self.ksm_zero_pages,
            "general_profit": profit,
            "stable_node_chains": self.stable_node_chains,
            "stable_node_dups": self.stable_node_dups,
            "full_scans": self.seqnr,
            "pages_scanned": self.pages_scanned,
            "pages_skipped": self.pages_skipped,
        }
        have = p.global_fields
        return {k: (v if k in have else None) for k, v in values.items()}

    def ksm_stat(self, proc: str) -> dict[str, int | bool | None]:
        """``/proc/PID/ksm_stat`` (plus ``ksm_merging_pages`` on 6.1), None where absent."""
        mm = self.mm(proc)
        p = self.profile
        zero = mm.ksm_zero_pages if p.zero_page_series else 0
        profit = (mm.ksm_merging_pages + zero) * PAGE_SIZE - mm.ksm_rmap_items * RMAP_ITEM_SIZE
        return {
            "ksm_rmap_items": mm.ksm_rmap_items,
            "ksm_zero_pages": mm.ksm_zero_pages if p.zero_page_series else None,
            "ksm_merging_pages": mm.ksm_merging_pages,
            "ksm_process_profit": profit if p.has_profit else None,
            "ksm_mergeable": mm.mergeable() if p.has_mergeable_lines else None,
            "ksm_merge_any": mm.merge_any if p.has_mergeable_lines else None,
        }

    # --------------------------------------------------------------- tokens
    def page_tokens(self, vma: Vma, numbering: dict[int, int]) -> list[str]:
        """Tokens of a mapping: ``-``, ``Z``, ``K<n>`` (by first appearance) or ``A``."""
        out = []
        f_node = self.f_node
        for pfn in vma.pfn:
            if pfn < 0:
                out.append("-")
            elif pfn == ZERO_PFN:
                out.append("Z")
            elif f_node[pfn] >= 0:
                n = numbering.get(pfn)
                if n is None:
                    n = numbering[pfn] = len(numbering)
                out.append(f"K{n}")
            else:
                out.append("A")
        return out

    def checkpoint(self, name: str) -> dict[str, Any]:
        """The observable state, as a ``ksm-trace/1`` checkpoint."""
        numbering: dict[int, int] = {}
        procs = {}
        pages = {}
        for proc, mm in self.procs.items():
            procs[proc] = self.ksm_stat(proc)
            pages[proc] = {
                vma.name: " ".join(self.page_tokens(vma, numbering)) for vma in mm.vmas.values()
            }
        return {"name": name, "global": self.global_counters(), "procs": procs, "pages": pages}

    # --------------------------------------------------------- timelines
    def clone(self) -> Kernel:
        """An independent copy (what-if branches, stepping back)."""
        return copy.deepcopy(self)

    def take_changes(self) -> ChangeLog:
        """The change record since the last call (requires ``record=True``)."""
        if self.log is None:
            raise OpError("this kernel was created without record=True")
        log = self.log
        self.log = ChangeLog()
        return log


def _s(value: str | None) -> str:
    if value is None:
        raise OpError("missing field")
    return value
