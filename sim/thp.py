"""Transparent huge pages that KSM splits, and the zero pages the split leaves uncounted.

qemu backs guest RAM with PMD-mapped transparent huge pages (512 pages, 2 MiB-aligned in
the process's address space). KSM never merges a huge page as a whole: to merge one of its
pages, ``try_to_merge_one_page`` (mm/ksm.c, 6.12 and 6.18) splits it first::

    if (!folio_trylock(folio))
        goto out;
    if (folio_test_large(folio)) {
        if (split_huge_page(page))
            goto out_unlock;
        folio = page_folio(page);
    }
    if (write_protect_page(vma, folio, &orig_pte) == 0) { ... }

It is reached by the zero-page path (``try_to_merge_with_zero_page``, ``use_zero_pages=1``),
by a stable-tree match (``try_to_merge_with_ksm_page``) and, in ``try_to_merge_two_pages``,
for the scanned page and then for the unstable tree's page. When both pages lie in the same
huge page the first split fails (ksmd holds a reference to each, ``can_split_folio``), and
``cmp_and_merge_page`` splits it afterwards without merging (its ``split`` flag: "If both
pages we tried to merge belong to the same compound page ...").

Since 6.12 ("mm: remap unused subpages to shared zeropage when splitting isolated thp",
Yu Zhao / Usama Arif), the split of an anonymous folio remaps its subpages with
``remap_page(folio, nr, RMP_USE_SHARED_ZEROPAGE)`` (6.12 ``__split_huge_page``; 6.15-6.18
``__folio_split``: ``if (!ret && is_anon) remap_flags = RMP_USE_SHARED_ZEROPAGE``), and
``remove_migration_pte`` -> ``try_to_map_unused_to_zeropage`` (mm/migrate.c) maps every
zero-filled subpage to the shared zero page instead (``pte_mkspecial(pfn_pte(my_zero_pfn(
addr), vma->vm_page_prot))``: a plain, clean PTE, like a read fault's, no KSM mark) and
drops the subpage's anon counter; the subpage's frame is freed. That memory is saved, but
no KSM counter shows it: not ``pages_sharing``, not ``ksm_zero_pages``, not ``ksm_stat``.
Its conditions (the folio mlocked or the VMA ``VM_LOCKED``, ``mm_forbids_zeropage``, and in
later kernels an armed userfaultfd) do not hold for anonymous guest RAM and are not modelled.

The page being merged is remapped too when it is zero-filled: ``write_protect_page`` then
finds no PTE of its folio and the merge fails (-EFAULT). On the zero-page path
``cmp_and_merge_page`` goes on (``if (!try_to_merge_with_zero_page(rmap_item, page))
return;`` only returns on success): the stable tree search, then the unstable tree, where
the page ksmd still holds (zero-filled) is inserted when no zero-filled page is there yet.
ksmd's walk later meets a zero-page PTE at that address, which ``folio_walk_start`` does
not return: no rmap_item, the stale one is freed as for any page that went away.

6.1 and 6.5 split without the remap (:attr:`sim.profiles.Profile.thp_split_zero_remap`):
the zero-filled subpages stay ordinary pages that KSM merges and counts as usual.

Model: ``Vma.thp`` holds per page the id of the huge page it is part of (ids are unique in
the kernel object), :data:`~sim.mm.THP_NONE`, or :data:`~sim.mm.THP_ZERO` for a subpage
the split mapped to the zero page (what the dashboard tells apart from a read fault). THPs
are not a scenario op (the format has none): :meth:`ThpMixin.thp` marks present pages
after a captured story. Left out: a THP shared by fork (the child's copy starts without
marks; a split in the parent remaps only the parent's PTEs), PTE-mapped large folios of
other orders (mTHP), khugepaged collapsing pages into new huge pages, and the deferred
split shrinker.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

from .changes import KEY_MASK, KEY_SHIFT
from .errors import OpError
from .mm import PTE_SPECIAL, THP_NONE, THP_ZERO, Vma
from .state import KsmState
from .unstable import WalkedUnstableIndex

#: pages of a PMD-mapped THP on x86_64 (2 MiB / 4 KiB)
HPAGE_PMD_NR = 512


class ThpMixin(KsmState):
    #: huge pages marked so far (ids), subpages remapped to the zero page by splits
    thp_groups: int = 0
    thp_splits: int = 0
    thp_zero_remapped: int = 0

    def thp(self, proc: str, vma_name: str, ranges: Iterable[tuple[int, int]]) -> int:
        """Mark page ranges ``[lo, hi)`` of a mapping as PMD-mapped transparent huge pages,
        one THP per range (at most :data:`HPAGE_PMD_NR` pages).

        Only present ordinary anonymous pages mapped once become part of it (a KSM page, a
        zero-page PTE or a page shared by fork cannot be in a THP). Returns the number of
        pages marked. Raises :class:`OpError` naming ``pages`` for a bad range.
        """
        mm = self.procs.get(proc)
        if mm is None:
            raise OpError(f"no process {proc!r}", "proc")
        vma = mm.vmas.get(vma_name)
        if vma is None:
            raise OpError(f"process {proc!r} has no mapping {vma_name!r}", "vma")
        groups = vma.thp
        if groups is None:
            groups = array("i", [THP_NONE]) * vma.npages
        marked = 0
        pfns, f_node, f_map = vma.pfn, self.f_node, self.f_map
        for lo, hi in ranges:
            if not (0 <= lo < hi <= vma.npages) or hi - lo > HPAGE_PMD_NR:
                raise OpError(
                    f"THP range {lo}-{hi - 1} outside the mapping's {vma.npages} pages "
                    f"or longer than {HPAGE_PMD_NR} pages",
                    "pages",
                )
            if any(groups[i] >= 0 for i in range(lo, hi)):
                raise OpError(f"THP range {lo}-{hi - 1} overlaps another THP", "pages")
            gid = self.thp_groups
            self.thp_groups = gid + 1
            for i in range(lo, hi):
                pfn = pfns[i]
                if pfn > 0 and f_node[pfn] < 0 and f_map[pfn] == 1:
                    groups[i] = gid
                    marked += 1
        vma.thp = groups
        if marked and not isinstance(self.unstable, WalkedUnstableIndex):
            # from now on, walks can meet nodes whose page a split took away
            walked = WalkedUnstableIndex(self)
            for content, key in self.unstable.items():
                walked[content] = key
            self.unstable = walked
        return marked

    def in_thp(self, key: int) -> bool:
        """Page ``key`` (a change-log key) is still mapped by a transparent huge page."""
        vma = self.vmas_by_uid.get(key >> KEY_SHIFT)
        return vma is not None and vma.thp is not None and vma.thp[key & KEY_MASK] >= 0

    def thp_pages(self) -> int:
        """Pages of live mappings still part of a transparent huge page."""
        n = 0
        for mm in self.procs.values():
            for vma in mm.vmas.values():
                if vma.thp is not None:
                    n += len(vma.thp) - vma.thp.count(THP_NONE) - vma.thp.count(THP_ZERO)
        return n

    def zero_page_ptes(self) -> int:
        """PTEs of live mappings that map the shared zero page (KSM-placed, read faults and
        THP splits alike), what pagemap and kpageflags ``ZERO_PAGE`` show on the kernel."""
        return sum(vma.pfn.count(0) for mm in self.procs.values() for vma in mm.vmas.values())

    # ----------------------------------------------------------- the hooks
    def _thp_split(self, vma: Vma, idx: int) -> None:
        """split_huge_page of the THP holding page ``idx`` (which must be in one)."""
        groups = vma.thp
        assert groups is not None
        gid = groups[idx]
        lo = idx
        while lo > 0 and groups[lo - 1] == gid:
            lo -= 1
        hi = idx + 1
        n = vma.npages
        while hi < n and groups[hi] == gid:
            hi += 1
        self.thp_splits += 1
        remap = self.profile.thp_split_zero_remap
        pfns, pte, f_content, f_node = vma.pfn, vma.pte, self.f_content, self.f_node
        log = self.log
        for j in range(lo, hi):
            groups[j] = THP_NONE
            if not remap:
                continue
            pfn = pfns[j]
            if pfn > 0 and f_content[pfn] == 0 and f_node[pfn] < 0:
                # try_to_map_unused_to_zeropage: a clean special PTE, the frame is freed
                pfns[j] = 0
                pte[j] = PTE_SPECIAL
                groups[j] = THP_ZERO
                self._put_frame(pfn)
                self.thp_zero_remapped += 1
                if log is not None:
                    log.event("thp_zero", (vma.uid << 32) | j)

    def _thp_merge_one(self, vma: Vma, idx: int, pfn: int) -> bool:
        """try_to_merge_one_page's split of the page's THP, if it is in one: False when the
        page itself was mapped to the zero page (the merge then fails)."""
        self._thp_split(vma, idx)
        return vma.pfn[idx] == pfn

    def _thp_merge_two(self, vma: Vma, idx: int, pfn: int, tv: Vma, ti: int, tpfn: int) -> bool:
        """try_to_merge_two_pages' splits (the scanned page's THP, then the tree page's);
        False when the merge fails."""
        a = vma.thp[idx] if vma.thp is not None else THP_NONE
        b = tv.thp[ti] if tv.thp is not None else THP_NONE
        if a >= 0 and a == b:
            # the same compound page: the split fails with both pages held, and
            # cmp_and_merge_page splits it afterwards without merging
            self._thp_split(vma, idx)
            return False
        if a >= 0 and not self._thp_merge_one(vma, idx, pfn):
            return False
        if b >= 0 and not self._thp_merge_one(tv, ti, tpfn):
            # our page became a KSM page with one PTE: break_cow gives it back a private
            # copy of the same contents (an ordinary page, as the simulator keeps it)
            return False
        return True
