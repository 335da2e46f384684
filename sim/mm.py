"""Processes (``mm_struct``), their mappings, page tables and rmap_items.

Memory layout is columnar so that a million simulated pages stay small: each scenario
mapping (:class:`Vma`) keeps one array per field, indexed by page. A mapping stands for the
kernel VMAs it is split into by madvise: VM_MERGEABLE is kept per page (the kernel VMA
boundaries are where it changes), and ``segs`` lists the kernel VMAs themselves as
``[start, end, anon]`` page ranges: madvise splits and re-merges them as the kernel does
(``vma_modify_flags``), and each has its own anon_vma (``anon``: 0 none, >0 one created in
this process, <0 one inherited through fork, which cannot absorb a neighbour without one).

Per page:
- the PTE: ``pfn`` (-1 none, 0 the shared zero page, >0 a frame) and ``pte`` flag bits
  (:data:`PTE_WRITE`, :data:`PTE_DIRTY`, :data:`PTE_SPECIAL`, :data:`PTE_EXCLUSIVE`);
- ``mergeable``: VM_MERGEABLE of the VMA holding the page;
- the rmap_item (``struct ksm_rmap_item``) for the address, if ksmd created one:
  ``it_state`` (:data:`ITEM_ABSENT`, :data:`ITEM_NONE`, :data:`ITEM_UNSTABLE`,
  :data:`ITEM_STABLE`), ``it_sum`` (oldchecksum; -1 = the zeroed initial value),
  ``it_age`` and ``it_skip`` (smart scan), ``it_node`` (stable node id when STABLE).

An unmapped mapping stays in its mm's ``regions`` (``dead``) until ksmd's next visit
frees its rmap_items, as the kernel's per-mm rmap_item list outlives the VMA.
"""

from __future__ import annotations

import sys
from array import array

PTE_WRITE = 1
PTE_DIRTY = 2
PTE_SPECIAL = 4
PTE_EXCLUSIVE = 8

ITEM_ABSENT = 0
ITEM_NONE = 1
ITEM_UNSTABLE = 2
ITEM_STABLE = 3

ZERO_PFN = 0
NO_CHECKSUM = -1

#: ``Vma.thp``: not part of a THP; mapped to the zero page by the split of its THP
THP_NONE = -1
THP_ZERO = -2

#: pages between two mappings of a process (the replayer's layout, never merged)
GAP_PAGES = 16
#: first page number of a process's first mapping (an arbitrary, page-aligned base)
BASE_PAGE = 0x7F0000000 >> 12


_LOW16 = array("H", range(1 << 16))
_LO, _HI = (0, 1) if sys.byteorder == "little" else (1, 0)


#: :func:`short_seq` makes runs of up to this many elements
SEQ_SHORT = 1024
#: (typecode, n) -> (ones, ramp, size): the bytes of n ones and of 0 .. n - 1 of that type,
#: each read as one integer, and their length (at most SEQ_SHORT entries a type code: 4 MiB
#: for "i" at worst)
_SEQ_INTS: dict[tuple[str, int], tuple[int, int, int]] = {}


def short_seq(typecode: str, start: int, n: int) -> array[int]:
    """``array(typecode, range(start, start + n))`` for ``n <= SEQ_SHORT`` and elements
    below the type's sign bit, without one Python integer per element: the bytes of
    ``start * ones + ramp`` (no element carries into the next)."""
    ints = _SEQ_INTS.get((typecode, n))
    if ints is None:
        ones = array(typecode, [1]) * n
        ramp = int.from_bytes(array(typecode, range(n)), sys.byteorder)
        ints = _SEQ_INTS[typecode, n] = (
            int.from_bytes(ones, sys.byteorder),
            ramp,
            n * ones.itemsize,
        )
    ones_int, ramp, size = ints
    return array(typecode, (start * ones_int + ramp).to_bytes(size, sys.byteorder))


def seq_array(start: int, n: int) -> array[int]:
    """``array("i", range(start, start + n))`` (0 <= start, start + n <= 2**31): a short one
    from :func:`short_seq`, a long one from 16-bit halves by strided copies."""
    if n <= SEQ_SHORT:
        return short_seq("i", start, n)
    out = array("i", bytes(4 * n))
    halves = memoryview(out).cast("B").cast("H")
    low16 = memoryview(_LOW16)
    i = 0
    while i < n:
        v = start + i
        low = v & 0xFFFF
        k = min(n - i, 0x10000 - low)
        halves[2 * i + _LO : 2 * (i + k) : 2] = low16[low : low + k]
        halves[2 * i + _HI : 2 * (i + k) : 2] = memoryview(array("H", [v >> 16]) * k)
        i += k
    return out


class Vma:
    """A scenario mapping: private anonymous, ``npages`` pages from page number ``start``."""

    __slots__ = (
        "uid",
        "mm",
        "name",
        "start",
        "npages",
        "pfn",
        "pte",
        "mergeable",
        "segs",
        "dead",
        "it_state",
        "it_sum",
        "it_age",
        "it_skip",
        "it_node",
        "nitems",
        "shadow",
        "it_skipped",
        "thp",
    )

    def __init__(self, uid: int, mm: MmStruct, name: str, start: int, npages: int):
        self.uid = uid
        self.mm = mm
        self.name = name
        self.start = start
        self.npages = npages
        self.pfn = array("i", [-1]) * npages
        self.pte = bytearray(npages)
        self.mergeable = bytearray(npages)
        #: the kernel VMAs of this mapping: [start, end, anon] in page offsets
        self.segs: list[list[int]] = [[0, npages, 0]]
        self.dead = False
        self.it_state = bytearray(npages)
        self.it_sum = array("i", [NO_CHECKSUM]) * npages
        self.it_age = bytearray(npages)
        self.it_skip = bytearray(npages)
        self.it_node = array("i", [-1]) * npages
        #: smart scan skipped the item in its last visit (for display only)
        self.it_skipped = bytearray(npages)
        self.nitems = 0
        #: what the process last wrote to each page (0: never written, reads zeros); the
        #: invariant checker verifies that KSM never changes what a process reads
        self.shadow = array("i", [0]) * npages
        #: transparent huge pages (:mod:`sim.thp`): None while the mapping never had one,
        #: else per page the THP it is part of (>= 0), :data:`THP_NONE` or :data:`THP_ZERO`
        self.thp: array[int] | None = None

    @property
    def end(self) -> int:
        return self.start + self.npages

    @property
    def anon_vma(self) -> bool:
        """Whether any of the mapping's VMAs has an anon_vma."""
        for seg in self.segs:
            if seg[2]:
                return True
        return False

    def seg_at(self, i: int) -> list[int]:
        for seg in self.segs:
            if seg[0] <= i < seg[1]:
                return seg
        raise IndexError(i)

    def split_at(self, i: int) -> None:
        """Split the VMA containing page ``i`` so that a VMA starts at ``i``."""
        for n, seg in enumerate(self.segs):
            if seg[0] < i < seg[1]:
                self.segs.insert(n + 1, [i, seg[1], seg[2]])
                seg[1] = i
                return

    def any_mergeable(self) -> bool:
        return not self.dead and self.mergeable.find(1) >= 0

    def __repr__(self) -> str:
        state = " dead" if self.dead else ""
        return f"<Vma {self.mm.name}.{self.name} {self.npages}p{state}>"


class MmStruct:
    """A process: its mappings and its KSM flags and counters (``struct mm_struct``)."""

    __slots__ = (
        "name",
        "pid",
        "regions",
        "vmas",
        "next_start",
        "registered",
        "merge_any",
        "exiting",
        "ksm_rmap_items",
        "ksm_merging_pages",
        "ksm_zero_pages",
        "order",
        "fork_offset_items",
        "fork_offset_merging",
    )

    def __init__(self, name: str, pid: int, order: int):
        self.name = name
        self.pid = pid
        self.order = order
        #: every mapping with rmap_items or PTEs, live or dead, in address order
        self.regions: list[Vma] = []
        #: live mappings by name, in creation (= address) order
        self.vmas: dict[str, Vma] = {}
        self.next_start = BASE_PAGE
        #: MMF_VM_MERGEABLE: has an mm_slot on ksmd's list
        self.registered = False
        #: MMF_VM_MERGE_ANY: prctl(PR_SET_MEMORY_MERGE, 1)
        self.merge_any = False
        self.exiting = False
        self.ksm_rmap_items = 0
        self.ksm_merging_pages = 0
        self.ksm_zero_pages = 0
        #: 6.5/6.1: counters inherited from the parent at fork, kept for life
        self.fork_offset_items = 0
        self.fork_offset_merging = 0

    def has_items(self) -> bool:
        return any(v.nitems for v in self.regions)

    def mergeable(self) -> bool:
        """ksm_mergeable: any VMA currently VM_MERGEABLE (ksm_process_mergeable)."""
        return any(v.any_mergeable() for v in self.vmas.values())

    def __repr__(self) -> str:
        return f"<MmStruct {self.name} pid={self.pid}>"
