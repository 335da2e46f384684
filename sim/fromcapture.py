"""A capture as a simulation: the ``ksm-scenario/1`` story of captured memory, and its writes.

:func:`capture_scenario` turns a :class:`~sim.capture.Capture` into a scenario whose steps
rebuild the captured processes in the simulator, then switch KSM on:

1. per process ``spawn`` (named ``comm-pid``), ``prctl 1`` when it is merge-any (see the
   merge modes), ``mmap`` of each captured mapping (named ``name@address``);
2. the pages' contents: a page of class 0 is written ``"zero"`` (zero-filled), a page whose
   class appears once in the capture ``"unique"``, the pages of any other class the label
   ``"c<class>"`` (equal classes, equal bytes); a page mapped to the kernel's zero page is
   a read fault (``read``), except as many as the process's ``ksm_zero_pages`` said were
   KSM-placed zero pages, which are written ``"zero"``; pages not present stay untouched;
3. ``madvise MADV_MERGEABLE`` of the mappings the merge mode marks;
4. a ``checkpoint "captured"``, then ``sysfs run=1``: "KSM is switched on with these
   knobs" (the scenario's ``sysfs`` holds the knobs, ``run=0`` until then).

The start state is *KSM off, nothing merged*: a page that was a KSM page at capture time
starts as an ordinary page of its class (what ``run=2`` would leave); the notes
(:func:`capture_notes`) say so when the capture showed KSM pages already.

Merge modes (:data:`MERGE_MODES`): ``"captured"`` marks what the capture says (VmFlags
``mg``; a merge-any process gets ``prctl``), ``"all"`` madvises every mapping (qemu guests
that are or would be marked), ``"prctl"`` gives every process ``PR_SET_MEMORY_MERGE``
(every eligible VMA, as ``prctl(PR_SET_MEMORY_MERGE, 1)`` does).

:func:`write_schedule` turns the pages' change counts into writes in simulated time: a
page that changed ``c`` times over the capture's period ``T`` is rewritten with new unique
content every ``T / c`` seconds, from a phase drawn from a seeded generator (the same
schedule every time). Standard library only.

:func:`thp_groups` gives the captured transparent huge pages, which the scenario format
cannot say (:func:`apply_thp` marks them in a kernel after the story, :mod:`sim.thp`). The
capture has a THP flag per page (``KPF_THP``) but no folio boundaries: the pages flagged
THP and present are grouped by their 2 MiB-aligned virtual address (mapping start + page
index), each run of consecutive flagged pages in one 2 MiB block being one huge page. That
is exact for PMD-mapped THPs (the only kind qemu guests' RAM gets: 512 pages, aligned);
a block holding several smaller large folios (mTHP) would be taken as one, and pages of a
THP that were not present would be missed (a PMD-mapped THP has all of its pages).

:func:`apply_order` gives the captured contents the memcmp order of a capture whose classes
are numbered in that order (``class_order: "memcmp"``), which the scenario format cannot
say either: the kernel's trees order pages by their bytes, so which nodes a walk meets (and
gives up at, behind a THP split's zero page) depends on it. Other captures keep the
simulator's stand-in order of labels and unique pages (:mod:`sim.contents`).
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .capture import (
    KSM_MASK,
    KSM_SHIFT,
    KSM_ZERO_PFN,
    PRESENT,
    THP,
    ZERO_CLASS,
    Capture,
    CapturedMapping,
)
from .scenario import FORMAT, Scenario, parse_scenario
from .thp import HPAGE_PMD_NR

if TYPE_CHECKING:
    from .kernel import Kernel

MERGE_MODES = ("captured", "all", "prctl")
#: the checkpoint after which KSM is switched on
CAPTURED = "captured"


def proc_names(capture: Capture) -> list[str]:
    """Simulator process names, one per captured process: ``comm-pid`` (unique)."""
    out: list[str] = []
    seen: set[str] = set()
    for n, p in enumerate(capture.processes):
        name = f"{p.comm or 'proc'}-{p.pid}"[:64]
        if name in seen:
            name = f"p{n}-{p.pid}"
        seen.add(name)
        out.append(name)
    return out


def vma_names(capture: Capture) -> list[list[str]]:
    """Simulator mapping names per process: ``name@address`` (``anon`` when unnamed)."""
    out = []
    for p in capture.processes:
        names = []
        for m in p.mappings:
            label = (m.name or "anon").replace(" ", "_")
            names.append(f"{label[:40]}@{m.start:x}")
        out.append(names)
    return out


def sim_mappings(capture: Capture) -> Iterator[tuple[str, str, CapturedMapping]]:
    """Every captured mapping with its simulator names: ``(process, mapping, mapping)``, in
    the capture's order (:func:`proc_names`, :func:`vma_names`)."""
    for p, pname, mnames in zip(
        capture.processes, proc_names(capture), vma_names(capture), strict=True
    ):
        for m, vname in zip(p.mappings, mnames, strict=True):
            yield pname, vname, m


def _ranges(pages: list[int]) -> list[str]:
    out: list[str] = []
    start = prev = -2
    for i in pages:
        if i == prev + 1:
            prev = i
            continue
        if start >= 0:
            out.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = i
    if start >= 0:
        out.append(f"{start}-{prev}" if prev > start else str(start))
    return out


def capture_document(
    capture: Capture,
    kernel: str = "6.18",
    knobs: dict[str, Any] | None = None,
    merge: str = "captured",
    name: str = "capture",
) -> dict[str, Any]:
    """The ``ksm-scenario/1`` document of a capture (see the module docstring)."""
    if merge not in MERGE_MODES:
        raise ValueError(f"unknown merge mode {merge!r} (known: {', '.join(MERGE_MODES)})")
    sysfs = {k: v for k, v in (knobs or {}).items() if k != "run"}
    sysfs["run"] = 0
    counts: Counter[int] = Counter()
    flags, cls = capture.flags, capture.cls
    for i in range(capture.pages):
        if flags[i] & PRESENT:
            counts[cls[i]] += 1
    steps: list[dict[str, Any]] = []
    madvise: list[dict[str, Any]] = []
    pnames = proc_names(capture)
    vnames = vma_names(capture)
    for p, pname, mnames in zip(capture.processes, pnames, vnames, strict=True):
        steps.append({"op": "spawn", "proc": pname})
        merge_any = merge == "prctl" or (merge == "captured" and bool(p.merge_any))
        if merge_any:
            steps.append({"op": "prctl", "proc": pname, "value": 1})
        ksm_zero = int((p.ksm_stat or {}).get("ksm_zero_pages", 0) or 0)
        for m, vname in zip(p.mappings, mnames, strict=True):
            steps.append({"op": "mmap", "proc": pname, "vma": vname, "pages": m.pages})
        for m, vname in zip(p.mappings, mnames, strict=True):
            groups: dict[str, list[int]] = {}
            reads: list[int] = []
            for j in range(m.pages):
                i = m.first + j
                f = flags[i]
                if not f & PRESENT:
                    continue
                c = cls[i]
                if (f & KSM_MASK) >> KSM_SHIFT == KSM_ZERO_PFN:
                    if ksm_zero > 0 and (m.mergeable or p.merge_any):
                        ksm_zero -= 1
                        groups.setdefault("zero", []).append(j)
                    else:
                        reads.append(j)
                    continue
                label = "zero" if c == ZERO_CLASS else "unique" if counts[c] == 1 else f"c{c}"
                groups.setdefault(label, []).append(j)
            for label, pages in groups.items():
                steps.append(
                    {
                        "op": "write",
                        "proc": pname,
                        "vma": vname,
                        "pages": _ranges(pages),
                        "content": label,
                    }
                )
            if reads:
                steps.append({"op": "read", "proc": pname, "vma": vname, "pages": _ranges(reads)})
            if not merge_any and (merge == "all" or m.mergeable):
                madvise.append(
                    {"op": "madvise", "proc": pname, "vma": vname, "advice": "MADV_MERGEABLE"}
                )
    steps.extend(madvise)
    steps.append({"op": "checkpoint", "name": CAPTURED})
    steps.append({"op": "sysfs", "knob": "run", "value": 1})
    s = capture.stats()
    mib = s["pages"] * 4096 / (1 << 20)
    return {
        "format": FORMAT,
        "name": name,
        "description": (
            f"Captured memory: {s['processes']} processes, {mib:,.0f} MiB mapped, "
            f"{s['present']} pages present ({s['zero']} zero, {s['duplicate']} duplicate, "
            f"{s['unique']} unique). KSM is switched on with these knobs "
            f"(merge mode {merge})."
        ),
        "kernel": kernel,
        "sysfs": sysfs,
        "steps": steps,
    }


def capture_scenario(
    capture: Capture,
    kernel: str = "6.18",
    knobs: dict[str, Any] | None = None,
    merge: str = "captured",
    name: str = "capture",
) -> Scenario:
    """:func:`capture_document`, parsed and validated."""
    return parse_scenario(capture_document(capture, kernel, knobs, merge, name))


def capture_notes(capture: Capture) -> list[str]:
    """What the simulation of a capture leaves out or changes, in sentences."""
    s = capture.stats()
    notes = list(capture.notes)
    if s["ksm_pages"] or s["ambiguous"]:
        notes.append(
            f"the capture showed {s['ksm_pages']} KSM pages"
            + (f" ({s['ambiguous']} more ambiguous)" if s["ambiguous"] else "")
            + ": the simulation starts with KSM off and nothing merged"
        )
    if s["thp"]:
        groups = sum(len(r) for _, _, r in thp_groups(capture))
        notes.append(
            f"{s['thp']} pages were in transparent huge pages, taken as {groups} huge pages "
            "by their 2 MiB-aligned addresses: KSM splits one before merging a page of it, "
            "and since 6.12 the split maps its zero-filled pages to the zero page, memory "
            "saved that no KSM counter shows (modelled, reported as uncounted zero-page PTEs)"
        )
    if s["swapped"]:
        notes.append(f"{s['swapped']} swapped-out pages were not read (left out)")
    return notes


def thp_groups(capture: Capture) -> list[tuple[str, str, list[tuple[int, int]]]]:
    """The captured THPs as ``(process, mapping, [(lo, hi), ...])`` page ranges of the
    simulator's mappings, one range per huge page (see the module docstring)."""
    out: list[tuple[str, str, list[tuple[int, int]]]] = []
    flags = capture.flags
    want = PRESENT | THP
    for pname, vname, m in sim_mappings(capture):
        ranges: list[tuple[int, int]] = []
        base = m.start >> 12
        block = lo = -1
        for j in range(m.pages):
            if flags[m.first + j] & want != want:
                if lo >= 0:
                    ranges.append((lo, j))
                    lo = -1
                continue
            b = (base + j) // HPAGE_PMD_NR
            if lo >= 0 and b != block:
                ranges.append((lo, j))
                lo = -1
            if lo < 0:
                lo, block = j, b
        if lo >= 0:
            ranges.append((lo, m.pages))
        if ranges:
            out.append((pname, vname, ranges))
    return out


def order_key(cls: int, classes: int) -> bytes:
    """The simulator's order bytes of class ``cls`` of a memcmp-ordered capture of
    ``classes`` classes: 8 big-endian bytes, spread over the 64-bit range so that the
    stand-in keys of pages written later (:func:`sim.contents.unique_bytes`) fall among
    them, and above the zero page's (all zero), as class 0 is."""
    return (cls * ((1 << 64) // max(2, classes))).to_bytes(8, "big")


def apply_order(kernel: Kernel, capture: Capture) -> int:
    """Order the captured contents in ``kernel`` as the capture's classes (after the
    captured story, before ksmd runs; a no-op unless the capture's ``class_order`` is
    ``"memcmp"``); returns the contents ordered."""
    if capture.class_order != "memcmp":
        return 0
    flags, cls, classes = capture.flags, capture.cls, capture.classes
    f_content, order = kernel.f_content, kernel.content_bytes
    done: set[int] = set()
    for pname, vname, m in sim_mappings(capture):
        pfns = kernel.procs[pname].vmas[vname].pfn
        for j in range(m.pages):
            i = m.first + j
            c = cls[i]
            if c == ZERO_CLASS or not flags[i] & PRESENT:
                continue
            pfn = pfns[j]
            if pfn <= 0:  # written "zero" or read: the zero page's content
                continue
            content = f_content[pfn]
            if content not in done:
                done.add(content)
                order[content] = order_key(c, classes)
    return len(done)


def apply_capture(kernel: Kernel, capture: Capture) -> int:
    """What a capture says beyond its story, applied to ``kernel`` after the story (before
    ksmd runs): its memcmp order (:func:`apply_order`), then its transparent huge pages
    (:func:`apply_thp`); returns the pages marked THP."""
    apply_order(kernel, capture)
    return apply_thp(kernel, capture)


def apply_thp(kernel: Kernel, capture: Capture) -> int:
    """Mark the captured THPs in ``kernel`` (after the captured story, before ksmd runs);
    returns the pages marked."""
    return sum(kernel.thp(proc, vma, ranges) for proc, vma, ranges in thp_groups(capture))


# ------------------------------------------------------------------------ writes
@dataclass(frozen=True)
class PageRef:
    """A captured page in the simulator: process, mapping and page index."""

    proc: str
    vma: str
    page: int


class WriteSchedule:
    """Due writes in simulated time: pages changing ``c`` times over ``T`` are rewritten
    every ``T / c`` from a seeded random phase (integer nanoseconds throughout)."""

    def __init__(self, capture: Capture, seed: int = 0) -> None:
        self.refs: list[PageRef] = []
        self.heap: list[tuple[int, int, int]] = []  # (due ns, ref index, period ns)
        if capture.snapshots < 2 or capture.period_s <= 0 or not capture.changes:
            return
        rng = random.Random(seed)
        period_ns = round(capture.period_s * 1e9)
        for pname, vname, m in sim_mappings(capture):
            for j in range(m.pages):
                c = capture.changes[m.first + j]
                if not c:
                    continue
                every = max(1, period_ns // c)
                self.heap.append((rng.randrange(every), len(self.refs), every))
                self.refs.append(PageRef(pname, vname, j))
        heapq.heapify(self.heap)

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def next_ns(self) -> int | None:
        return self.heap[0][0] if self.heap else None

    def due(self, now_ns: int) -> Iterator[PageRef]:
        """The writes due at or before ``now_ns`` (each rescheduled one period later)."""
        heap = self.heap
        while heap and heap[0][0] <= now_ns:
            t, ref, every = heap[0]
            heapq.heapreplace(heap, (t + every, ref, every))
            yield self.refs[ref]
