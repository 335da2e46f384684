"""ksmd: the scan cursor, smart scan and the per-page decision (ksm-model.md §3-§5).

:meth:`ScannerMixin._ksm_do_scan` is the kernel's ``ksm_do_scan``: it asks
:meth:`_scan_get_next_rmap_item` for the next page to consider, up to a budget, and hands
each to ``cmp_and_merge_page``; a pass end returns nothing and ends the batch early, so a
batch never spans two passes. Two orders of ``cmp_and_merge_page`` exist: 6.11+ (detach,
checksum gate, zero page, stable tree, unstable tree) and the older one (stable tree first,
on every scan).

The unstable tree is a map from content to the item holding it (a compact
:class:`~sim.unstable.UnstableIndex`). The kernel's is a
red-black tree by memcmp, reset at each pass start, whose walk gives up (inserts nothing)
when a node on its path has no mergeable page or is the walker's own frame. Within a pass
only ksmd changes pages, and it takes an item out of the tree before changing its page, so
every node a walk meets is mergeable and only the node of the same content can share the
walker's frame (after fork): the dictionary gives the kernel's result for scenario runs.
Pages changed between two batches of one pass (the dashboard's stepper) are checked only
when they are the match; which other nodes such a walk would meet depends on the order of
unique pages, which the format leaves open.

Large sessions: a run of pages whose outcome is known before looking at each (zero pages
about to be merged with the zero page, pages of fresh unique contents about to enter the
unstable tree; pages of one content about to join its stable node; KSM pages met again on
their node) is handled at once by :meth:`ScannerMixin._scan_run`, with array slices
instead of a Python step per page, and so is a stretch of zero-page PTEs the walk steps
over (:meth:`ScannerMixin._free_zero_stretch`); the result is the same, page for page.
Whole passes and big batches run with the cyclic garbage collector paused
(:data:`GC_PAUSE_PAGES`).
"""

from __future__ import annotations

import gc
from array import array
from collections.abc import Callable

from .mm import (
    ITEM_ABSENT,
    ITEM_NONE,
    ITEM_STABLE,
    ITEM_UNSTABLE,
    PTE_DIRTY,
    PTE_SPECIAL,
    MmStruct,
    Vma,
    seq_array,
)
from .stable import StableTreeMixin
from .state import StableNode, add_items
from .thp import ThpMixin
from .unstable import WalkedUnstableIndex

#: batches of at least this many pages (and whole passes) run with the cyclic garbage
#: collector paused (process-wide, re-enabled at the batch's end)
GC_PAUSE_PAGES = 4096
#: pages looked at for a run at once, and the fewest worth it
RUN_WINDOW = 1024
RUN_MIN = 32
_NO_NODE = array("i", [-1]) * RUN_WINDOW
_ONE_MAP = array("i", [1]) * RUN_WINDOW
_ZERO_PFNS = array("i", bytes(4 * RUN_WINDOW))
_IN_UNSTABLE_OR_NONE = bytes((ITEM_NONE, ITEM_UNSTABLE))
_ABSENT_OR_NONE = bytes((ITEM_ABSENT, ITEM_NONE))


def longest_prefix(ok: Callable[[int], bool], lo: int, hi: int) -> int:
    """The longest run length in ``[lo, hi)`` that ``ok`` accepts, by bisection: ``ok``
    holds for the run's prefixes up to some length and for none longer, ``ok(lo)`` holds
    (or ``lo`` is 0) and ``ok(hi)`` does not."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def leading_equal(col: array[int], start: int, value: int, n: int) -> int:
    """How many of ``col[start : start + n]`` from the first equal ``value``: the first
    element that differs is the lowest set bit of one exclusive or of the two runs read as
    little-endian integers. A short window is looked at first: most runs end within it."""
    m = min(n, RUN_MIN)
    while True:
        here = col[start : start + m]
        same = array("i", [value]) * m
        if here != same:
            diff = int.from_bytes(here, "little") ^ int.from_bytes(same, "little")
            return ((diff & -diff).bit_length() - 1) // 32
        if m == n:
            return n
        m = n


def skip_age(age: int) -> int:
    """skip_age: how many passes an item of this age may be skipped."""
    if age <= 3:
        return 1
    if age <= 5:
        return 2
    if age <= 8:
        return 4
    return 8


class ScannerMixin(StableTreeMixin, ThpMixin):
    #: handle runs of pages at once (:meth:`_scan_run`); tests turn it off to compare
    scan_runs = True
    #: KSM pages ksmd met again with their item already on the node (nothing to do): the
    #: time model's cheap "KSM revisit" (``sim.timemodel``); no kernel counter has it
    ksm_revisits: int = 0
    #: pages handed to cmp_and_merge_page while still mapped by a transparent huge page
    #: (the time model's cheaper THP visits); no kernel counter has it
    thp_handed: int = 0

    # ------------------------------------------------------------ the walk
    def _ksm_do_scan(self, budget: int | None) -> int:
        """ksm_do_scan: up to ``budget`` pages (None: to the end of the pass).

        Returns the number of pages handed to cmp_and_merge_page. Within one mapping the
        next page comes straight from :meth:`_walk_vma` (what ``_scan_get_next_rmap_item``
        would find: ksmd's own work never changes the mm's VMAs); at a mapping's end the
        full walk takes over.
        """
        if (budget is None or budget >= GC_PAUSE_PAGES) and gc.isenabled():
            # a big batch allocates a stable node (and its items array) per new KSM frame and
            # frees next to nothing cyclic (a freed chain's memo): the collector's repeated
            # passes over a large heap would cost time for nothing; it runs after the batch
            gc.disable()
            try:
                return self._ksm_do_scan(budget)
            finally:
                gc.enable()
        done = 0
        limit = -1 if budget is None else budget
        f_node = self.f_node
        nodes = self.nodes
        seen = self._ksm_page_seen
        cmp = self._cmp_and_merge_611 if self.profile.checksum_first else self._cmp_and_merge_65
        walk = self._walk_vma
        while done != limit:
            got = self._scan_get_next_rmap_item()
            if got is None:
                break
            vma, idx, pfn = got
            smart = self.profile.smart_scan and self.knobs.get("smart_scan", 0) == 1
            runs = self.scan_runs and not smart and self.log is None and self.profile.checksum_first
            no_run_before = 0
            pfns = vma.pfn
            while True:
                if runs:
                    left = limit - done if limit >= 0 else vma.npages
                    n = self._scan_run(vma, idx, left, idx >= no_run_before)
                    if n < 0:
                        no_run_before = -n
                    elif n:
                        done += n
                        if done == limit:
                            break
                        idx = walk(vma, idx + n, smart, True)
                        if idx < 0:
                            break
                        pfn = pfns[idx]
                        continue
                nid = f_node[pfn]
                if nid >= 0:
                    seen(vma, idx, nodes[nid])
                else:
                    if vma.thp is not None and vma.thp[idx] >= 0:
                        self.thp_handed += 1
                    cmp(vma, idx, pfn)
                self.pages_scanned += 1
                done += 1
                if done == limit:
                    break
                idx = walk(vma, idx + 1, smart, True)
                if idx < 0:
                    break
                pfn = pfns[idx]
        return done

    # ------------------------------------------------------- runs of pages
    def _scan_run(self, vma: Vma, i: int, budget: int, windows: bool) -> int:
        """A run of pages from page ``i`` whose outcome is known in advance, handled at once.

        Exactly what the page-by-page path does to each (the walk considers every page of
        the run, ``cmp_and_merge_page`` takes the same branch on each), for two kinds of
        runs of consecutive frames, each an ordinary page mapped once:

        - zero pages whose checksum is recorded, item not in a tree, ``use_zero_pages=1``:
          each is merged with the zero page and its frame freed;
        - pages of consecutive distinct contents none of which has a stable node or an
          unstable-tree entry, checksums recorded, items not in the stable tree: each is
          (re)inserted in the unstable tree.

        Only while no chain and no dead node is in the stable tree (a search is then a
        look-up), without smart scan, on the 6.11+ order, when no change log is kept.
        A third kind is a run of pages of one content merged into its stable node
        (:meth:`_merge_run`), a fourth a run of KSM pages met again on their node
        (:meth:`_revisit_run`), a fifth a run of pages met for the first time, which only
        get their rmap_item and checksum (:meth:`_first_sight_run`). Returns the pages
        handled; 0 or ``-end`` (a window that does not qualify: ``windows`` is False before
        page ``end``) to take the page path.
        """
        n = min(budget, vma.npages - i, RUN_WINDOW)
        if n < 2 or self.stable_node_chains or self.dead_nodes or self.thp_groups:
            return 0
        pfns = vma.pfn
        p0 = pfns[i]
        if p0 > 0 and pfns[i + 1] == p0 and self.f_node[p0] >= 0:
            return self._revisit_run(vma, i, n, p0)
        if p0 <= 0 or pfns[i + 1] != p0 + 1 or self.f_node[p0] >= 0:
            return 0  # not a run of fresh frames: cheap to tell
        if vma.it_state[i + 1] == ITEM_ABSENT:
            first = self._first_sight_run(vma, i, n, p0)
            if first:
                return first
        same = self._merge_run(vma, i, n, p0)
        if same:
            return same
        if n < RUN_MIN or not windows:
            return 0
        c0 = self.f_content[p0]
        if self.f_content[p0 + 1] != (c0 + 1 if c0 else 0):
            # no window qualifies (its second page is not zero / the next content): the
            # answer the halving below would reach, without building and comparing windows
            while n // 2 >= RUN_MIN:
                n //= 2
            return -(i + n)
        frames = seq_array(p0, n)
        while True:
            # a window that does not qualify is halved: a run may end before it does
            if self._run_at_once(vma, i, n, frames[:n]):
                return n
            if n // 2 < RUN_MIN:
                return -(i + n)
            n //= 2

    def _revisit_run(self, vma: Vma, i: int, n: int, kpfn: int) -> int:
        """Pages mapping the KSM frame ``kpfn`` whose items are already on its node: each is
        a KSM revisit (``_ksm_page_seen`` with nothing to do); returns how many (0: fewer
        than 2 here)."""
        nid = self.f_node[kpfn]
        # each such page maps the frame: there are no more of them than its map count (read
        # from the frame's column rather than the node's items: a node made a pass ago is
        # no longer in the cache of a large session)
        n = min(n, self.f_map[kpfn])
        pfns = vma.pfn
        state = vma.it_state
        merg = vma.mergeable
        it_node = vma.it_node
        frames = array("i", [kpfn]) * n
        nids = array("i", [nid]) * n
        stable = bytes((ITEM_STABLE,)) * n

        def ok(m: int) -> bool:
            e = i + m
            return (
                pfns[i:e] == frames[:m]
                and state[i:e] == stable[:m]
                and it_node[i:e] == nids[:m]
                and merg.find(0, i, e) < 0
            )

        if not ok(n):
            n = longest_prefix(ok, 1, n)
            if n < 2:
                return 0
        e = i + n
        self.ksm_revisits += n
        vma.it_skipped[i:e] = bytes(n)
        self.cursor_addr = vma.start + e
        self.pages_scanned += n
        return n

    def _first_sight_run(self, vma: Vma, i: int, n: int, p0: int) -> int:
        """Pages ksmd meets for the first time, each an ordinary page (no stable node) of a
        consecutive frame: page ``i``'s rmap_item just made by the walk and not in a tree,
        the next pages without one. Each gets its rmap_item (``get_next_rmap_item``) and its
        checksum recorded: on the 6.11+ order ``cmp_and_merge_page`` stops at the checksum
        gate (a new item's zeroed checksum never equals a page's). Returns how many (0:
        fewer than 2 here)."""
        state = vma.it_state
        sums = vma.it_sum
        f_content = self.f_content
        if state[i] != ITEM_NONE or sums[i] == f_content[p0]:
            return 0
        pfns = vma.pfn
        f_node = self.f_node
        merg = vma.mergeable

        def ok(m: int) -> bool:
            e = i + m
            return (
                state[i + 1 : e] == bytes(m - 1)
                and pfns[i:e] == seq_array(p0, m)
                and f_node[p0 : p0 + m] == _NO_NODE[:m]
                and merg.find(0, i, e) < 0
            )

        if not ok(n):
            n = longest_prefix(ok, 1, n)
            if n < 2:
                return 0
        e = i + n
        new = n - 1
        # _new_item on pages i+1 .. e-1 (page i's is made), then each checksum recorded
        state[i + 1 : e] = bytes((ITEM_NONE,)) * new
        vma.it_age[i + 1 : e] = bytes(new)
        vma.it_skip[i + 1 : e] = bytes(new)
        vma.it_node[i + 1 : e] = _NO_NODE[:new]
        vma.nitems += new
        vma.mm.ksm_rmap_items += new
        self.ksm_rmap_items += new
        sums[i:e] = f_content[p0 : p0 + n]
        vma.it_skipped[i:e] = bytes(n)
        self.cursor_addr = vma.start + e
        self.pages_scanned += n
        return n

    def _merge_run(self, vma: Vma, i: int, n: int, p0: int) -> int:
        """Pages of one content that has a regular stable node with room for them, each
        merged into it in order (``try_to_merge_with_ksm_page``); returns how many (0: no
        such run here)."""
        f_content = self.f_content
        c = f_content[p0]
        if c == 0 or f_content[p0 + 1] != c:
            return 0
        node = self.stable.get(c)
        if node is None or node.kind != StableNode.REGULAR or node.dead:
            return 0
        have = len(node.items)
        # each page finds the node a sharing candidate: 0 < rmap_hlist_len < max_page_sharing
        n = min(n, self.knobs["max_page_sharing"] - have)
        if have == 0 or n < 2:
            return 0
        n = leading_equal(f_content, p0, c, n)  # the frames' longest run of content c
        if n < 2:
            return 0
        same = array("i", [c]) * n
        e = i + n
        pfns = vma.pfn
        state = vma.it_state
        frames = seq_array(p0, n)
        if (
            pfns[i:e] != frames
            or self.f_node[p0 : p0 + n] != _NO_NODE[:n]
            or self.f_map[p0 : p0 + n] != _ONE_MAP[:n]
            or vma.mergeable.find(0, i, e) >= 0
            or state.count(ITEM_NONE, i, e) != n
            or vma.it_sum[i:e] != same
        ):
            return 0
        kpfn = node.pfn
        pfns[i:e] = array("i", [kpfn]) * n
        vma.pte[i:e] = bytes(n)
        self.f_map[kpfn] += n
        self.f_map[p0 : p0 + n] = _ZERO_PFNS[:n]
        self.free_pfns.extend(frames)
        key = (vma.uid << 32) | i
        add_items(node, key, n)
        self.pages_sharing += n
        state[i:e] = bytes((ITEM_STABLE,)) * n
        vma.it_node[i:e] = array("i", [node.nid]) * n
        vma.mm.ksm_merging_pages += n
        vma.it_skipped[i:e] = bytes(n)
        self.cursor_addr = vma.start + e
        self.pages_scanned += n
        return n

    def _run_at_once(self, vma: Vma, i: int, n: int, frames: array[int]) -> bool:
        """Pages ``i`` .. ``i + n - 1`` as one run if they qualify (see :meth:`_scan_run`);
        ``frames``: the pfns they must map (consecutive from the first one's)."""
        e = i + n
        pfns = vma.pfn
        p0 = frames[0]
        if (
            pfns[i:e] != frames
            or self.f_node[p0 : p0 + n] != _NO_NODE[:n]
            or self.f_map[p0 : p0 + n] != _ONE_MAP[:n]
            or vma.mergeable.find(0, i, e) >= 0
            or vma.it_state[i:e].translate(None, _IN_UNSTABLE_OR_NONE)
        ):
            return False
        contents = self.f_content[p0 : p0 + n]
        if vma.it_sum[i:e] != contents:
            return False
        c0 = contents[0]
        state = vma.it_state
        if c0 == 0:
            if (
                not self.knobs["use_zero_pages"]
                or contents != _ZERO_PFNS[:n]
                or state.find(ITEM_UNSTABLE, i, e) >= 0
            ):
                return False
            # try_to_merge_with_zero_page on each, in order
            pfns[i:e] = _ZERO_PFNS[:n]
            if self.profile.zero_page_series:
                vma.pte[i:e] = bytes((PTE_SPECIAL | PTE_DIRTY,)) * n
                self.ksm_zero_pages += n
                vma.mm.ksm_zero_pages += n
            else:
                vma.pte[i:e] = bytes((PTE_SPECIAL,)) * n
            self.f_map[p0 : p0 + n] = _ZERO_PFNS[:n]
            self.free_pfns.extend(frames)
        else:
            if contents != seq_array(c0, n) or self.stable_has.find(1, c0, c0 + n) >= 0:
                return False
            if not self.unstable.set_run(c0, (vma.uid << 32) | i, n):
                return False
            # remove_rmap_item_from_tree (the unstable ones) then the insert, on each
            self.pages_unshared += state.count(ITEM_NONE, i, e)
            state[i:e] = bytes((ITEM_UNSTABLE,)) * n
        vma.it_skipped[i:e] = bytes(n)
        self.cursor_addr = vma.start + e
        self.pages_scanned += n
        return True

    def _scan_get_next_rmap_item(self) -> tuple[Vma, int, int] | None:
        """scan_get_next_rmap_item: the next (mapping, page, pfn) to consider, or None.

        None means either that no mm is registered (nothing happens) or that a full pass
        just ended (``seqnr`` advanced and the cursor is back on the head).
        """
        if not self.slots:
            return None
        mm = self.cursor
        if mm is None:
            # pass start: reset the unstable tree, cursor on the first slot
            self.unstable.clear()
            self._advisor_start_scan()  # type: ignore[attr-defined]
            mm = self.cursor = self.slots[0]
            self.cursor_addr = 0
            self.cursor_seen_mergeable = False
        smart = self.profile.smart_scan and self.knobs.get("smart_scan", 0) == 1
        while True:
            got = self._walk_mm(mm, smart)
            if got is not None:
                return got
            # the mm is done: remove_trailing_rmap_items happened in the walk
            pos = self.slots.index(mm)
            nxt = self.slots[pos + 1] if pos + 1 < len(self.slots) else None
            if not self.cursor_seen_mergeable or mm.exiting:
                self._drop_slot(mm)
            if nxt is None:
                self.cursor = None
                self.cursor_addr = 0
                self._advisor_stop_scan()  # type: ignore[attr-defined]
                self.seqnr += 1
                self._event("pass_end")
                return None
            mm = self.cursor = nxt
            self.cursor_addr = 0
            self.cursor_seen_mergeable = False

    def _drop_slot(self, mm: MmStruct) -> None:
        """ksmd removes an mm with no VM_MERGEABLE VMA (or an exiting one) from its list."""
        self.slots.remove(mm)
        mm.registered = False
        if not self.profile.merge_any_kept_on_drop:
            mm.merge_any = False
        self._event("mm_dropped")

    def _walk_mm(self, mm: MmStruct, smart: bool) -> tuple[Vma, int, int] | None:
        """Walk one mm from the cursor address; free items of addresses not considered.

        ``cursor_addr`` is a page number like the kernel's ``ksm_scan.address``, so that
        mappings unmapped or created between two batches do not move the cursor.
        """
        exiting = mm.exiting
        for vma in list(mm.regions):
            if vma.end <= self.cursor_addr:
                continue
            i = max(0, self.cursor_addr - vma.start)
            if vma.dead or exiting:
                state = vma.it_state
                for j in range(i, vma.npages):
                    if state[j]:
                        self._free_item(vma, j)
                if vma.dead and not vma.nitems:
                    self._drop_dead_region(vma)
                self.cursor_addr = vma.end
                continue
            if vma.mergeable.find(1, i) >= 0:
                self.cursor_seen_mergeable = True
            i = self._walk_vma(vma, i, smart, vma.anon_vma)
            if i >= 0:
                return vma, i, vma.pfn[i]
        return None

    def _walk_vma(self, vma: Vma, i: int, smart: bool, anon: bool) -> int:
        """The walk inside one live mapping from page ``i``: the next page to consider (the
        cursor just after it), or -1 with the cursor at the mapping's end. Items of pages
        not considered are freed on the way (remove_trailing_rmap_items / no page)."""
        n = vma.npages
        merg = vma.mergeable
        pfns = vma.pfn
        state = vma.it_state
        while i < n:
            pfn = pfns[i]
            if pfn > 0 and merg[i] and anon:
                if not state[i]:
                    self._new_item(vma, i)
                if smart and self._should_skip_rmap_item(vma, i, pfn):
                    vma.it_skipped[i] = 1
                    i += 1
                    continue
                vma.it_skipped[i] = 0
                self.cursor_addr = vma.start + i + 1
                return i
            if (
                pfn == 0 and i + 1 < n and pfns[i + 1] == 0 and self.scan_runs and self.log is None
            ):  # a stretch of zero pages: their items at once
                i = self._free_zero_stretch(vma, i)
                continue
            if state[i]:
                self._free_item(vma, i)
            i += 1
        self.cursor_addr = vma.end
        return -1

    def _free_zero_stretch(self, vma: Vma, i: int) -> int:
        """Pages mapping the zero page from page ``i`` (at least two), never considered: their
        items are freed, at once when none is in a tree (what ``_free_item`` does to each of
        them then: the item goes, the counters drop). Returns the page after the stretch."""
        n = vma.npages
        pfns = vma.pfn
        e = i

        def zeros(m: int) -> bool:  # the m pages from e map the zero page
            return pfns[e : e + m] == _ZERO_PFNS[:m]

        while e < n:
            w = min(RUN_WINDOW, n - e)
            if zeros(w):
                e += w
                continue
            e += longest_prefix(zeros, 0, w)  # the zero-page prefix of this window
            break
        state = vma.it_state
        if not state[i:e].translate(None, _ABSENT_OR_NONE):
            freed = e - i - state.count(ITEM_ABSENT, i, e)
            if freed:
                state[i:e] = bytes(e - i)
                vma.nitems -= freed
                vma.mm.ksm_rmap_items -= freed
                self.ksm_rmap_items -= freed
        else:
            for j in range(i, e):
                if state[j]:
                    self._free_item(vma, j)
        return e

    def _should_skip_rmap_item(self, vma: Vma, idx: int, pfn: int) -> bool:
        """should_skip_rmap_item (smart scan, 6.7+)."""
        if self.f_node[pfn] >= 0:
            return False  # KSM pages are never skipped, their age stands still
        age = vma.it_age[idx]
        if age != 255:
            vma.it_age[idx] = age + 1
        if age < 3:
            return False
        if not vma.it_skip[idx]:
            vma.it_skip[idx] = skip_age(age)
            return False
        self.pages_skipped += 1
        vma.it_skip[idx] -= 1
        self._remove_rmap_item_from_tree(vma, idx)
        if self.log is not None:
            self.log.event("smart_skip", (vma.uid << 32) | idx)
        return True

    # -------------------------------------------------- cmp_and_merge_page
    def _cmp_and_merge_page(self, vma: Vma, idx: int, pfn: int) -> None:
        """cmp_and_merge_page: the per-page decision."""
        nid = self.f_node[pfn]
        if nid >= 0:
            self._ksm_page_seen(vma, idx, self.nodes[nid])
        elif self.profile.checksum_first:
            self._cmp_and_merge_611(vma, idx, pfn)
        else:
            self._cmp_and_merge_65(vma, idx, pfn)

    def _ksm_page_seen(self, vma: Vma, idx: int, node: StableNode) -> None:
        """The page is already a KSM page (§4 A)."""
        if vma.it_state[idx] == ITEM_STABLE and vma.it_node[idx] == node.nid:
            self.ksm_revisits += 1
            return
        # reached by fork, or made KSM in place while we mapped it: stable_tree_search
        # returns the page itself and merging it with itself succeeds (bypassing the limit)
        self._remove_rmap_item_from_tree(vma, idx)
        self._stable_tree_append(vma, idx, node)
        if self.log is not None:
            self.log.event("ksm_append", (vma.uid << 32) | idx)

    def _checksum_changed(self, vma: Vma, idx: int, content: int) -> bool:
        """The checksum gate: store a changed checksum; the page is volatile this scan."""
        if vma.it_sum[idx] == content:
            return False
        vma.it_sum[idx] = content
        if self.log is not None:
            self.log.event("volatile", (vma.uid << 32) | idx)
        return True

    def _cmp_and_merge_611(self, vma: Vma, idx: int, pfn: int) -> None:
        if vma.it_state[idx] >= ITEM_UNSTABLE:  # in a tree (the call is a no-op otherwise)
            self._remove_rmap_item_from_tree(vma, idx)
        content = self.f_content[pfn]
        if vma.it_sum[idx] != content and self._checksum_changed(vma, idx, content):
            return
        if content == 0 and self.knobs["use_zero_pages"]:
            if vma.thp is not None and vma.thp[idx] >= 0 and not self._thp_merge_one(vma, idx, pfn):
                self._zero_merge_failed(vma, idx)
                return
            self._merge_with_zero_page(vma, idx, pfn)
            return
        stable = self.stable
        # a search meets nodes of other contents, but while no chain and no dead node is in
        # the tree looking at them changes nothing: without a node of its own it finds nothing
        if content in stable or (stable and (self.stable_node_chains or self.dead_nodes)):
            node = self._stable_tree_search(content)
        else:
            node = None
        if node is not None:
            if vma.thp is not None and vma.thp[idx] >= 0 and not self._thp_merge_one(vma, idx, pfn):
                return
            self._merge_with_ksm_page(vma, idx, pfn, node)
            return
        self._unstable_tree_search_insert(vma, idx, pfn, content)

    def _cmp_and_merge_65(self, vma: Vma, idx: int, pfn: int) -> None:
        content = self.f_content[pfn]
        stable = self.stable
        if content in stable or (stable and (self.stable_node_chains or self.dead_nodes)):
            node = self._stable_tree_search(content)
        else:
            node = None
        self._remove_rmap_item_from_tree(vma, idx)
        if node is not None and node.nid in self.nodes and not node.dead:
            if vma.thp is not None and vma.thp[idx] >= 0 and not self._thp_merge_one(vma, idx, pfn):
                return
            self._merge_with_ksm_page(vma, idx, pfn, node)
            return
        if self._checksum_changed(vma, idx, content):
            return
        if content == 0 and self.knobs["use_zero_pages"]:
            if vma.thp is not None and vma.thp[idx] >= 0 and not self._thp_merge_one(vma, idx, pfn):
                return  # 6.5 and 6.1 never remap: not reached on their profiles
            self._merge_with_zero_page(vma, idx, pfn)
            return
        self._unstable_tree_search_insert(vma, idx, pfn, content)

    def _zero_merge_failed(self, vma: Vma, idx: int) -> None:
        """cmp_and_merge_page after try_to_merge_with_zero_page failed because the split of
        the page's THP mapped it to the zero page (:mod:`sim.thp`): the stable tree search
        and the unstable tree go on with the zero-filled page ksmd still holds; any merge
        of it fails (it has no PTE left), so only an insert changes anything."""
        stable = self.stable
        if 0 in stable or (stable and (self.stable_node_chains or self.dead_nodes)):
            if self._stable_tree_search(0) is not None:
                return  # try_to_merge_with_ksm_page fails
        if not self._unstable_walk(0, -1):
            return  # gave up at a node whose page is gone
        if self.unstable.get(0) is None:
            key = (vma.uid << 32) | idx
            self.unstable[0] = key
            vma.it_state[idx] = ITEM_UNSTABLE
            self.pages_unshared += 1
            if self.log is not None:
                self.log.event("unstable_insert", key)
        # else: the tree's zero-filled page is gone too (get_mergeable_page fails), or the
        # merge of ours fails in try_to_merge_two_pages: nothing changes

    # ------------------------------------------------------------- merges
    def _merge_with_zero_page(self, vma: Vma, idx: int, pfn: int) -> None:
        """try_to_merge_with_zero_page -> replace_page(ZERO_PAGE): the item stays NONE."""
        vma.pfn[idx] = 0
        if self.profile.zero_page_series:
            vma.pte[idx] = PTE_SPECIAL | PTE_DIRTY
            self.ksm_zero_pages += 1
            vma.mm.ksm_zero_pages += 1
        else:
            vma.pte[idx] = PTE_SPECIAL
        self._put_frame(pfn)
        if self.log is not None:
            self.log.event("zero_merge", (vma.uid << 32) | idx)

    def _merge_with_ksm_page(self, vma: Vma, idx: int, pfn: int, node: StableNode) -> None:
        """try_to_merge_with_ksm_page + stable_tree_append."""
        kpfn = node.pfn
        vma.pfn[idx] = kpfn
        vma.pte[idx] = 0
        self.f_map[kpfn] += 1
        self._put_frame(pfn)
        self._remove_rmap_item_from_tree(vma, idx)
        self._stable_tree_append(vma, idx, node)
        if self.log is not None:
            self.log.frames.add(kpfn)
            self.log.event("merge", (vma.uid << 32) | idx)

    def _unstable_walk(self, content: int, pfn: int) -> bool:
        """False when the unstable tree's walk for ``content`` gives up before reaching
        its node or place: a node on its path has no mergeable page (get_mergeable_page), or
        is the walker's own frame ``pfn``. Only a kernel with huge pages walks
        (:class:`sim.unstable.WalkedUnstableIndex`); elsewhere every node a walk meets has
        its page (see the module doc)."""
        index = self.unstable
        if not isinstance(index, WalkedUnstableIndex) or not index.nodes:
            return True

        def mergeable(key: int) -> bool:
            tpfn = self._mergeable_pfn(*self.vma_of(key))
            return tpfn > 0 and tpfn != pfn

        return index.walk(content, mergeable)

    @staticmethod
    def _mergeable_pfn(tv: Vma, ti: int) -> int:
        """get_mergeable_page for a tree item: its frame, or -1 when its VMA is no longer
        mergeable or no page is mapped there (the zero page included)."""
        tpfn = tv.pfn[ti]
        if tv.dead or tv.mm.exiting or not tv.mergeable[ti] or not tv.anon_vma or tpfn <= 0:
            return -1
        return tpfn

    def _unstable_tree_search_insert(self, vma: Vma, idx: int, pfn: int, content: int) -> None:
        """unstable_tree_search_insert, then try_to_merge_two_pages on a match."""
        key = (vma.uid << 32) | idx
        if not self._unstable_walk(content, pfn):
            return  # gave up at a node whose page is gone: nothing inserted, no merge
        tkey = self.unstable.get(content)
        if tkey is None:
            self.unstable[content] = key
            vma.it_state[idx] = ITEM_UNSTABLE
            self.pages_unshared += 1
            if self.log is not None:
                self.log.event("unstable_insert", key)
            return
        tv, ti = self.vma_of(tkey)
        tpfn = self._mergeable_pfn(tv, ti)
        if tpfn < 0:
            return
        if tpfn == pfn:
            return  # the same frame (shared after fork): never substitute
        if self.f_content[tpfn] != content:
            return  # the tree page changed under us (only with mid-pass writes)
        if (vma.thp is not None or tv.thp is not None) and not self._thp_merge_two(
            vma, idx, pfn, tv, ti, tpfn
        ):
            return
        # try_to_merge_two_pages: our page becomes a KSM page in place ...
        vma.pte[idx] = 0
        # ... and the tree page's PTE is replaced by one mapping it
        tv.pfn[ti] = pfn
        tv.pte[ti] = 0
        self.f_map[pfn] += 1
        self._put_frame(tpfn)
        self._remove_rmap_item_from_tree(tv, ti)
        node = self._stable_tree_insert(content, pfn)
        self._stable_tree_append(tv, ti, node)
        self._stable_tree_append(vma, idx, node)
        if self.log is not None:
            self.log.frames.add(pfn)
            self.log.event("merge_new", tkey)
            self.log.event("merge_new", key)
