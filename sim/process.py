"""Process operations and the page-table events they cause (ksm-model.md §2, §7).

spawn, fork, exit, mmap, munmap, write, read, madvise and prctl act at once on PTEs,
frames and the immediate counters (``ksm_zero_pages``); the rest of KSM's bookkeeping
(rmap_items, tree counters) waits for ksmd's next visit, as in the kernel.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

from .errors import OpError, UnsupportedError
from .mm import (
    PTE_DIRTY,
    PTE_EXCLUSIVE,
    PTE_SPECIAL,
    PTE_WRITE,
    MmStruct,
    Vma,
    seq_array,
)
from .scanner import ScannerMixin
from .scenario import Ranges
from .state import MAX_CONTENT

_ANON_NEW = PTE_WRITE | PTE_DIRTY | PTE_EXCLUSIVE


def iter_pages(pages: Ranges | None, npages: int) -> Iterable[int]:
    if pages is None:
        return range(npages)
    return (i for lo, hi in pages for i in range(lo, min(hi, npages)))


class ProcessMixin(ScannerMixin):
    # ---------------------------------------------------------- lookups
    def mm(self, proc: str) -> MmStruct:
        try:
            return self.procs[proc]
        except KeyError:
            raise OpError(f"no live process named {proc!r}", "proc") from None

    def vma(self, proc: str, name: str) -> Vma:
        mm = self.mm(proc)
        try:
            return mm.vmas[name]
        except KeyError:
            raise OpError(f"process {proc!r} has no mapping named {name!r}", "vma") from None

    def _check_pages(self, vma: Vma, pages: Ranges | None) -> None:
        if pages is not None and pages and pages[-1][1] > vma.npages:
            raise OpError(
                f"page {pages[-1][1] - 1} is outside the {vma.npages}-page mapping", "pages"
            )

    # ------------------------------------------------------ registration
    def _ksm_enter(self, mm: MmStruct) -> None:
        """__ksm_enter: a new mm_slot just before the cursor (at the tail between passes)."""
        mm.registered = True
        if self.cursor is None or self.knobs.get("run") == 2:
            self.slots.append(mm)
        else:
            self.slots.insert(self.slots.index(self.cursor), mm)

    # ---------------------------------------------------------- processes
    def spawn(self, proc: str) -> None:
        if proc in self.procs:
            raise OpError(f"process {proc!r} already exists", "proc")
        mm = MmStruct(proc, self.next_pid, self.next_order)
        self.next_pid += 1
        self.next_order += 1
        self.procs[proc] = mm

    def fork(self, proc: str, child: str) -> None:
        """fork: dup_mmap + ksm_fork (§2, §7.2)."""
        parent = self.mm(proc)
        if child in self.procs:
            raise OpError(f"process {child!r} already exists", "child")
        self.spawn(child)
        mm = self.procs[child]
        mm.next_start = parent.next_start
        mm.merge_any = parent.merge_any
        for pv in parent.vmas.values():
            cv = self._new_vma(mm, pv.name, pv.start, pv.npages)
            cv.mergeable[:] = pv.mergeable
            cv.shadow[:] = pv.shadow
            # anon_vma_fork: each VMA with an anon_vma gets its own, chained to the parent's
            cv.segs = [[s, e, -self._new_anon() if a else 0] for s, e, a in pv.segs]
            ppfn, ppte = pv.pfn, pv.pte
            for i in (i for s, e, a in pv.segs if a for i in range(s, e)):
                pfn = ppfn[i]
                if pfn < 0:
                    continue
                flags = ppte[i]
                if pfn > 0:
                    self.f_map[pfn] += 1
                    if self.f_node[pfn] < 0:
                        # anonymous pages become shared copy-on-write in both
                        flags &= ~(PTE_WRITE | PTE_EXCLUSIVE)
                        ppte[i] = flags
                    if self.log is not None:
                        self.log.frames.add(pfn)
                        self.log.pages.add(self.key(pv, i))
                cv.pfn[i] = pfn
                cv.pte[i] = flags
        # ksm_fork: the mm is a byte copy of the parent's counters ...
        mm.ksm_rmap_items = parent.ksm_rmap_items
        mm.ksm_merging_pages = parent.ksm_merging_pages
        mm.ksm_zero_pages = parent.ksm_zero_pages
        mm.fork_offset_items = parent.ksm_rmap_items
        mm.fork_offset_merging = parent.ksm_merging_pages
        if parent.registered:
            if self.profile.fork_resets_counters:
                mm.fork_offset_items = mm.fork_offset_merging = 0
                mm.ksm_rmap_items = 0
                mm.ksm_merging_pages = 0
                self.ksm_zero_pages += mm.ksm_zero_pages
            self._ksm_enter(mm)
        if not self.profile.zero_page_series:
            mm.ksm_zero_pages = 0

    def exit(self, proc: str) -> None:
        """exit: __ksm_exit (slot moved or freed), then exit_mmap tears the tables down."""
        mm = self.mm(proc)
        if mm.registered and self.cursor is not mm:
            if not mm.has_items():
                self.slots.remove(mm)
                mm.registered = False
            else:
                self.slots.remove(mm)
                pos = 0 if self.cursor is None else self.slots.index(self.cursor) + 1
                self.slots.insert(pos, mm)
        for vma in list(mm.vmas.values()):
            self._unmap(vma)
        mm.exiting = True
        del self.procs[proc]

    # ----------------------------------------------------------- mappings
    def _new_vma(self, mm: MmStruct, name: str, start: int, npages: int) -> Vma:
        vma = Vma(self.next_uid, mm, name, start, npages)
        self.next_uid += 1
        self.vmas_by_uid[vma.uid] = vma
        mm.vmas[name] = vma
        mm.regions.append(vma)
        mm.regions.sort(key=lambda v: v.start)
        return vma

    def mmap(self, proc: str, name: str, npages: int) -> None:
        mm = self.mm(proc)
        if name in mm.vmas:
            raise OpError(f"process {proc!r} already has a mapping {name!r}", "vma")
        if npages < 1:
            raise OpError("a mapping needs at least one page", "pages")
        vma = self._new_vma(mm, name, mm.next_start, npages)
        mm.next_start += npages + 16
        if mm.merge_any:
            # ksm_vma_flags: VMAs of a merge-any process are mergeable from creation
            vma.mergeable[:] = b"\x01" * npages
            if not mm.registered:
                self._ksm_enter(mm)

    def munmap(self, proc: str, name: str) -> None:
        self._unmap(self.vma(proc, name))

    def _unmap(self, vma: Vma) -> None:
        """zap every PTE; the mapping's rmap_items wait for ksmd."""
        for i in range(vma.npages):
            if vma.pfn[i] >= 0:
                self._zap(vma, i)
        del vma.mm.vmas[vma.name]
        vma.dead = True
        if not vma.nitems:
            self._drop_dead_region(vma)

    def _zap(self, vma: Vma, i: int) -> None:
        """zap_pte_range for one PTE."""
        pfn = vma.pfn[i]
        if pfn == 0:
            if self._is_ksm_zero(vma, i):
                self._dec_zero(vma)
                self._event("zap_zero", vma, i)
        elif pfn > 0:
            self._put_frame(pfn)
        vma.pfn[i] = -1
        vma.pte[i] = 0
        if self.log is not None:
            self.log.pages.add(self.key(vma, i))

    def _is_ksm_zero(self, vma: Vma, i: int) -> bool:
        """is_ksm_zero_pte: the zero page with the dirty mark (6.6+)."""
        return self.profile.zero_page_series and vma.pfn[i] == 0 and bool(vma.pte[i] & PTE_DIRTY)

    def _dec_zero(self, vma: Vma) -> None:
        """ksm_might_unmap_zero_page: global and per-mm ksm_zero_pages -1."""
        self.ksm_zero_pages -= 1
        vma.mm.ksm_zero_pages -= 1

    # ------------------------------------------------------------ accesses
    def write(self, proc: str, name: str, pages: Ranges | None, content: str) -> None:
        vma = self.vma(proc, name)
        self._check_pages(vma, pages)
        ranges = pages if pages is not None else ((0, vma.npages),)
        for lo, hi in ranges:
            i = lo
            hi = min(hi, vma.npages)
            while i < hi:
                n = self._write_fresh(vma, i, hi, content)
                if n:
                    i += n
                    continue
                cid = self.content_id(content)
                vma.shadow[i] = cid
                self._write_page(vma, i, cid)
                i += 1

    def _write_fresh(self, vma: Vma, lo: int, hi: int, content: str) -> int:
        """Write pages ``lo`` up to ``hi`` at once when none is mapped yet, as
        :meth:`_write_page` would one by one (the first fault prepares the VMA's anon_vma,
        each page gets a new frame); returns how many were written (0: take the page path).

        Only when no freed frame waits for reuse (new frames are then the next pfns in
        order) and the content ids fit; stops at the end of the VMA holding ``lo``.
        """
        if self.free_pfns or hi - lo < 2:
            return 0
        seg = vma.seg_at(lo)
        hi = min(hi, seg[1])
        n = hi - lo
        if n < 2 or vma.pfn[lo] != -1 or vma.pfn[lo:hi] != array("i", [-1]) * n:
            return 0
        if content == "unique":
            first = self.next_content
            if first + n > MAX_CONTENT:
                return 0
            self.next_content = first + n
            cids = seq_array(first, n)
        else:
            cids = array("i", [self.content_id(content)]) * n
        if not seg[2]:
            seg[2] = self._new_anon()  # anon_vma_prepare on the first write fault
        vma.shadow[lo:hi] = cids
        base = len(self.f_content)
        vma.pfn[lo:hi] = seq_array(base, n)
        vma.pte[lo:hi] = bytes((_ANON_NEW,)) * n
        self.f_content.extend(cids)
        self.f_map.extend(array("i", [1]) * n)
        self.f_node.extend(array("i", [-1]) * n)
        log = self.log
        if log is not None:
            log.frames.update(range(base, base + n))
            first_key = self.key(vma, lo)
            keys = range(first_key, first_key + n)
            log.events.extend(("write", key) for key in keys)
            log.pages.update(keys)
        return n

    def _new_anon(self) -> int:
        self.next_anon += 1
        return self.next_anon

    def _write_page(self, vma: Vma, i: int, content: int) -> None:
        seg = vma.seg_at(i)
        if not seg[2]:
            seg[2] = self._new_anon()  # anon_vma_prepare on the first write fault
        pfn = vma.pfn[i]
        kind = "write"
        if pfn > 0 and self.f_node[pfn] < 0 and self.f_map[pfn] == 1:
            # the only mapping of an ordinary page: written in place
            self.f_content[pfn] = content
            vma.pte[i] = _ANON_NEW
            if self.log is not None:
                self.log.frames.add(pfn)
        else:
            if pfn == 0 and self._is_ksm_zero(vma, i):
                self._dec_zero(vma)
                kind = "cow_zero"
            elif pfn > 0:
                self._put_frame(pfn)  # COW from a KSM page or a page shared by fork
                kind = "cow"
            vma.pfn[i] = self._alloc_frame(content)
            vma.pte[i] = _ANON_NEW
        self._event(kind, vma, i)

    def read(self, proc: str, name: str, pages: Ranges | None) -> None:
        vma = self.vma(proc, name)
        self._check_pages(vma, pages)
        for i in iter_pages(pages, vma.npages):
            if vma.pfn[i] < 0:
                vma.pfn[i] = 0
                vma.pte[i] = PTE_SPECIAL
                self._event("read_fault", vma, i)

    # ------------------------------------------------------------ madvise
    def madvise(self, proc: str, name: str, pages: Ranges | None, advice: str) -> None:
        vma = self.vma(proc, name)
        self._check_pages(vma, pages)
        if advice not in ("MADV_MERGEABLE", "MADV_UNMERGEABLE"):
            raise OpError(f"unknown advice {advice!r}", "advice")
        flag = 1 if advice == "MADV_MERGEABLE" else 0
        ranges = pages if pages is not None else ((0, vma.npages),)
        modified: list[list[int]] = []
        for lo, hi in ranges:
            for seg in list(vma.segs):
                a, b = max(seg[0], lo), min(seg[1], hi)
                if a >= b or vma.mergeable[seg[0]] == flag:
                    continue  # not in the range, or already as asked: untouched
                if flag and not vma.mm.registered:
                    self._ksm_enter(vma.mm)
                vma.split_at(a)
                vma.split_at(b)
                piece = vma.seg_at(a)
                if flag or not piece[2]:
                    vma.mergeable[a:b] = bytes((flag,)) * (b - a)
                else:
                    for i in range(a, b):
                        self._break_ksm(vma, i)
                        vma.mergeable[i] = flag
                modified.append(piece)
        for piece in modified:
            self._vma_merge(vma, piece)

    def _vma_merge(self, vma: Vma, piece: list[int]) -> None:
        """vma_merge_existing_range: a modified VMA merges with equal neighbours."""
        for side in (-1, 1):
            if piece not in vma.segs:
                return
            n = vma.segs.index(piece)
            m = n + side
            if not 0 <= m < len(vma.segs):
                continue
            other = vma.segs[m]
            if vma.mergeable[other[0]] != vma.mergeable[piece[0]]:
                continue
            a, b = piece[2], other[2]
            # is_mergeable_anon_vma: the same anon_vma, or one side without one and the
            # other not inherited through fork
            if not (a == b or (a == 0 and b > 0) or (b == 0 and a > 0)):
                continue
            left, right = (other, piece) if side < 0 else (piece, other)
            left[1] = right[1]
            left[2] = a or b
            vma.segs.remove(right)
            piece = left

    def _break_ksm(self, vma: Vma, i: int) -> None:
        """break_ksm: unshare a KSM page, or (6.6+) a KSM-placed zero page."""
        pfn = vma.pfn[i]
        if pfn > 0 and self.f_node[pfn] >= 0:
            content = self.f_content[pfn]
            self._put_frame(pfn)
            vma.pfn[i] = self._alloc_frame(content)
            vma.pte[i] = PTE_EXCLUSIVE
            self._event("unshare", vma, i)
        elif pfn == 0 and self._is_ksm_zero(vma, i):
            self._dec_zero(vma)
            vma.pfn[i] = self._alloc_frame(0)
            vma.pte[i] = PTE_EXCLUSIVE
            self._event("unshare_zero", vma, i)

    # -------------------------------------------------------------- prctl
    def prctl(self, proc: str, value: int) -> None:
        """prctl(PR_SET_MEMORY_MERGE, value)."""
        if not self.profile.has_prctl:
            raise UnsupportedError(
                f"prctl(PR_SET_MEMORY_MERGE) does not exist on kernel {self.profile.version}"
            )
        mm = self.mm(proc)
        if value == 1:
            if mm.merge_any:
                return
            if not mm.registered:
                self._ksm_enter(mm)
            mm.merge_any = True
            for vma in mm.vmas.values():
                vma.mergeable[:] = b"\x01" * vma.npages
        elif value == 0:
            if not mm.merge_any:
                return
            for vma in mm.vmas.values():
                for s, e, anon in vma.segs:
                    for i in range(s, e):
                        if vma.mergeable[i]:
                            if anon:
                                self._break_ksm(vma, i)
                            vma.mergeable[i] = 0
            mm.merge_any = False
        else:
            raise OpError("PR_SET_MEMORY_MERGE takes 0 or 1", "value")
