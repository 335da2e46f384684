"""Transparent huge pages that KSM splits (sim/thp.py): on 6.12+ the split maps the huge
page's zero-filled pages to the shared zero page, clean and counted nowhere; 6.1 and 6.5
split without that. Checked against the real ksmd by tests/whatif/test_thp_kernel.py."""

from __future__ import annotations

from array import array

import pytest

from sim import Kernel
from sim.capture import PRESENT, THP, Capture, CapturedMapping, CapturedProcess
from sim.errors import OpError
from sim.fromcapture import apply_thp, capture_notes, thp_groups
from sim.invariants import check_invariants
from sim.mm import PTE_DIRTY, PTE_SPECIAL, THP_NONE, THP_ZERO
from sim.snapshot import KIND_ZERO, page_kinds, why_not_merged


def _kernel(version: str, use_zero_pages: int, thp: bool = True) -> Kernel:
    """One process, two 512-page huge pages: pages 0-7 and 512-519 hold "x" (also in a
    second, 4 KiB process), 8-15 "y" in the first huge page only, the rest zero-filled."""
    k = Kernel(version, {"use_zero_pages": use_zero_pages, "pages_to_scan": 5000}, record=True)
    k.spawn("a")
    k.mmap("a", "ram", 1024)
    k.write("a", "ram", ((0, 1024),), "zero")
    k.write("a", "ram", ((0, 8), (512, 520)), "x")
    k.write("a", "ram", ((8, 16),), "y")
    k.madvise("a", "ram", None, "MADV_MERGEABLE")
    k.spawn("b")
    k.mmap("b", "buf", 8)
    k.write("b", "buf", None, "x")
    k.madvise("b", "buf", None, "MADV_MERGEABLE")
    if thp:
        assert k.thp("a", "ram", [(0, 512), (512, 1024)]) == 1024
    return k


def _passes(k: Kernel, n: int) -> None:
    k.start_scan()
    for _ in range(n):
        k.scan_pass()
        check_invariants(k)
    k.stop_scan()


@pytest.mark.parametrize("version", ["6.18", "6.12"])
@pytest.mark.parametrize("use_zero_pages", [1, 0])
def test_split_maps_zero_filled_pages_to_the_zero_page_uncounted(
    version: str, use_zero_pages: int
) -> None:
    k = _kernel(version, use_zero_pages)
    _passes(k, 5)
    vma = k.mm("a").vmas["ram"]
    zero = [i for i in range(1024) if i >= 16 and not 512 <= i < 520]
    assert all(vma.pfn[i] == 0 and vma.pte[i] == PTE_SPECIAL for i in zero)
    assert all(vma.thp[i] == THP_ZERO for i in zero)  # type: ignore[index]
    assert k.thp_pages() == 0 and k.thp_splits == 2 and k.thp_zero_remapped == len(zero)
    assert k.zero_page_ptes() == len(zero)
    # counted nowhere: the merges of "x" (24 pages) and "y" (8) only
    g = k.global_counters()
    assert g["ksm_zero_pages"] == 0
    assert (g["pages_shared"], g["pages_sharing"]) == (2, 30)
    assert k.ksm_stat("a")["ksm_merging_pages"] == 24
    assert k.ksm_stat("a")["ksm_rmap_items"] == 24  # the zero pages' items were freed
    # the dashboard shows a plain zero-page mapping, and says where it came from
    assert page_kinds(k, vma)[zero[0]] == KIND_ZERO
    assert "split its transparent huge page" in why_not_merged(k, vma, zero[0])


@pytest.mark.parametrize("version", ["6.5", "6.1"])
def test_old_kernels_split_without_the_remap(version: str) -> None:
    """Zero-filled pages stay ordinary pages that KSM merges as usual."""
    k = _kernel(version, 0)
    _passes(k, 5)
    vma = k.mm("a").vmas["ram"]
    assert vma.pfn.count(0) == 0 and k.thp_zero_remapped == 0
    assert k.thp_splits == 2 and k.thp_pages() == 0
    g = k.global_counters()
    # every page of a and b is merged (zero-filled ones into KSM pages, in dups)
    assert g["pages_shared"] + g["pages_sharing"] == 1024 + 8
    flat = _kernel(version, 0, thp=False)
    _passes(flat, 5)
    assert flat.global_counters() == g  # the split changes nothing observable there


def test_without_thp_the_zero_pages_are_counted() -> None:
    k = _kernel("6.18", 1, thp=False)
    _passes(k, 5)
    assert k.global_counters()["ksm_zero_pages"] == 1024 - 24
    vma = k.mm("a").vmas["ram"]
    assert vma.pte[100] == PTE_SPECIAL | PTE_DIRTY and vma.thp is None


def test_the_zero_page_path_fails_and_the_page_enters_the_unstable_tree() -> None:
    """use_zero_pages=1: the first zero-filled page of a huge page ksmd tries to merge is
    itself remapped by the split, so its merge fails and cmp_and_merge_page goes on: no
    zero page in the unstable tree yet, so the page ksmd holds is inserted."""
    k = Kernel("6.18", {"use_zero_pages": 1}, record=True)
    k.spawn("a")
    k.mmap("a", "ram", 512)
    k.write("a", "ram", None, "zero")
    k.write("a", "ram", ((0, 1),), "unique")
    k.madvise("a", "ram", None, "MADV_MERGEABLE")
    k.thp("a", "ram", [(0, 512)])
    vma = k.mm("a").vmas["ram"]
    k.knobs["run"] = 1
    k.scan_pass()  # checksums
    for _ in range(2):  # page 0 (unique: into the unstable tree), page 1 (zero)
        k.scan_page()
    assert vma.pfn[1] == 0 and vma.pte[1] == PTE_SPECIAL
    assert k.unstable.get(0) == (vma.uid << 32) | 1
    assert k.pages_unshared == 2 and k.ksm_zero_pages == 0
    assert any(kind == "thp_zero" for kind, _ in k.take_changes().events)
    k.scan_pass()  # the rest of the pass: every other page is on the zero page now
    assert k.pages_scanned == 512 + 2
    k.scan_pass()  # the stale items are freed, the unique page alone is left
    assert k.ksm_rmap_items == 1 and k.pages_unshared == 1


def test_two_pages_of_one_huge_page_split_without_merging() -> None:
    """The scanned page and the unstable tree's page in the same huge page: the split
    fails with both held, cmp_and_merge_page splits afterwards, nothing merges this pass;
    the next pass merges them as 4 KiB pages."""
    k = Kernel("6.18", {"use_zero_pages": 1, "max_page_sharing": 1024}, record=True)
    k.spawn("a")
    k.mmap("a", "ram", 512)
    k.write("a", "ram", None, "x")
    k.madvise("a", "ram", None, "MADV_MERGEABLE")
    k.thp("a", "ram", [(0, 512)])
    k.knobs["run"] = 1
    k.scan_pass()
    k.scan_page()
    k.scan_page()
    assert k.thp_splits == 1 and k.pages_sharing == 0 and k.thp_pages() == 0
    k.scan_pass()
    assert (k.pages_shared, k.pages_sharing) == (1, 510)  # page 1 is not in the tree
    k.scan_pass()
    assert (k.pages_shared, k.pages_sharing) == (1, 511)


def test_the_tree_page_huge_page_is_split_too() -> None:
    """A 4 KiB page meets a huge page's page in the unstable tree: the tree page's huge
    page is split (its zero-filled pages go to the zero page), then the two merge."""
    k = Kernel("6.18", {"use_zero_pages": 0}, record=True)
    k.spawn("a")
    k.mmap("a", "ram", 512)
    k.write("a", "ram", None, "zero")
    k.write("a", "ram", ((0, 1),), "x")
    k.madvise("a", "ram", None, "MADV_MERGEABLE")
    k.thp("a", "ram", [(0, 512)])
    k.spawn("b")
    k.mmap("b", "buf", 1)
    k.write("b", "buf", None, "x")
    k.madvise("b", "buf", None, "MADV_MERGEABLE")
    k.knobs["run"] = 1
    k.scan_pass()
    # a's page 0 enters the unstable tree, its zero pages meet each other in one huge page
    k.scan_pass()
    assert k.thp_splits == 1 and k.mm("a").vmas["ram"].pfn.count(0) == 511
    assert (k.pages_shared, k.pages_sharing) == (1, 1)


def test_thp_marks_only_present_ordinary_pages_and_checks_ranges() -> None:
    k = Kernel("6.18")
    k.spawn("a")
    k.mmap("a", "m", 600)
    k.write("a", "m", ((0, 100),), "x")
    k.read("a", "m", ((100, 110),))
    assert k.thp("a", "m", [(0, 512)]) == 100  # not the zero-page PTEs, not the absent
    vma = k.mm("a").vmas["m"]
    assert vma.thp is not None and vma.thp[100] == THP_NONE
    for bad in ([(50, 60)], [(0, 513)], [(5, 5)], [(590, 601)]):
        with pytest.raises(OpError) as e:
            k.thp("a", "m", bad)
        assert e.value.field == "pages"
    with pytest.raises(OpError) as e:
        k.thp("a", "x", [(0, 1)])
    assert e.value.field == "vma"
    c = k.clone()
    assert c.mm("a").vmas["m"].thp == vma.thp and c.mm("a").vmas["m"].thp is not vma.thp


def _capture(start: int, thp: list[int], pages: int = 1100) -> Capture:
    flags = array("B", [PRESENT]) * pages
    for i in thp:
        flags[i] |= THP
    m = CapturedMapping(start, pages, "", True)
    proc = CapturedProcess(1, "qemu", mappings=[m])
    return Capture([proc], flags, array("I", [0]) * pages, classes=1)


def test_capture_thp_groups_follow_2mib_aligned_addresses() -> None:
    # the mapping starts 100 pages before a 2 MiB boundary
    start = (0x40000000 >> 12) - 100
    cap = _capture(start << 12, list(range(0, 100)) + list(range(100, 612)) + [700, 702])
    [(proc, vma, ranges)] = thp_groups(cap)
    assert proc == "qemu-1" and vma.startswith("anon@")
    assert ranges == [(0, 100), (100, 612), (700, 701), (702, 703)]
    assert "taken as 4 huge pages" in " ".join(capture_notes(cap))
    k = Kernel("6.18")
    k.spawn(proc)
    k.mmap(proc, vma, 1100)
    k.write(proc, vma, None, "zero")
    assert apply_thp(k, cap) == 614


def _stale_zero_node_kernel(kernel: str, huge: bool) -> Kernel:
    """A huge page of zero-filled pages scanned first, then 500 identical pairs."""
    k = Kernel(kernel, {"use_zero_pages": 1, "smart_scan": 0, "pages_to_scan": 100_000})
    k.spawn("P")
    k.mmap("P", "m1", 512)
    k.mmap("P", "m2", 1000)
    k.write("P", "m1", None, "zero")
    for i in range(500):
        k.write("P", "m2", [(i, i + 1), (i + 500, i + 501)], f"L{i}")
    if huge:
        k.thp("P", "m1", [(0, 512)])
    k.madvise("P", "m1", None, "MADV_MERGEABLE")
    k.madvise("P", "m2", None, "MADV_MERGEABLE")
    return k


def _three_passes(k: Kernel) -> list[tuple[int, int, int, int]]:
    out = []
    for _ in range(3):
        k.scan_batch()
        g = k.global_counters()
        out.append(
            (g["pages_shared"], g["pages_sharing"], g["ksm_zero_pages"], g["pages_unshared"])
        )
    return out


def test_a_split_zero_page_in_the_unstable_tree_makes_every_walk_give_up() -> None:
    """Measured on 6.18 (tests/whatif/test_thp_kernel.py): the first zero-filled page of the
    huge page splits it, the split maps it to the zero page, its merge fails and ksmd inserts
    the page it still holds in the unstable tree: the root, whose page is gone. Every later
    walk of the pass meets it and gives up (get_mergeable_page): pass 2 merges nothing, pass
    3 (a new tree) merges the 500 pairs. Without the huge page pass 2 merges them."""
    assert _three_passes(_stale_zero_node_kernel("6.18", True)) == [
        (0, 0, 0, 0),
        (0, 0, 0, 1),
        (500, 500, 0, 0),
    ]
    assert _three_passes(_stale_zero_node_kernel("6.18", False)) == [
        (0, 0, 0, 0),
        (500, 500, 512, 0),
        (500, 500, 512, 0),
    ]
    # 6.5: the split leaves the zero-filled pages mapped: nothing stale, pass 2 merges
    got = _three_passes(_stale_zero_node_kernel("6.5", True))
    assert got[1][:2] == (500, 500)
