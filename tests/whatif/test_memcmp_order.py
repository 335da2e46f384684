"""Captures whose classes follow the pages' memcmp order (``ksmlab capture --memcmp-order``).

The kernel's stable and unstable trees are ordered by the pages' bytes; when a THP split
leaves a node whose page is gone in the unstable tree, which walks meet it (and give up)
depends on that order. A salted capture cannot say it; a memcmp-ordered one can, and the
simulation of the capture then follows it (:func:`sim.fromcapture.apply_order`). The kernel
side of the same case is in ``tests/whatif/test_thp_kernel.py``.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import random
from array import array
from itertools import pairwise

import pytest

from app.kernel.capture import capture_processes
from sim import Kernel
from sim.capture import (
    PRESENT,
    THP,
    Capture,
    CapturedMapping,
    CapturedProcess,
    CaptureError,
    ClassTable,
    load_capture,
)
from sim.fromcapture import apply_capture, apply_order, capture_scenario, sim_mappings
from sim.stepper import Next, Stepper

PAGE = 4096


def test_class_table_numbers_classes_in_memcmp_order() -> None:
    rng = random.Random(7)
    # pages that agree on their first 3000 bytes, and pages that differ at once
    shared = [b"\x41" * 3000 + rng.randbytes(PAGE - 3000) for _ in range(20)]
    pages = shared + [rng.randbytes(PAGE) for _ in range(20)] + [bytes(PAGE)]
    table = ClassTable(os.urandom(32))
    digests = array("q", [table.digest(p) for p in pages])
    present = bytearray(b"\x01" * len(pages))
    keys = {table.digest(p): p for p in pages}
    cls, n = table.renumber(digests, present, keys)
    assert n == len(pages) and cls[-1] == 0
    assert sorted(range(len(pages)), key=lambda i: cls[i]) == sorted(
        range(len(pages)), key=lambda i: pages[i]
    )
    # without keys: the salted order, which is not the bytes' (40! orders)
    salted, _ = table.renumber(digests, present)
    assert sorted(range(40), key=lambda i: salted[i]) != sorted(range(40), key=lambda i: pages[i])
    # prefixes only: the ties follow the salted order among themselves, the rest the bytes
    short = {d: p[:64] for d, p in keys.items()}
    cut, _ = table.renumber(digests, present, short)
    order = sorted(range(20, 40), key=lambda i: cut[i])
    assert order == sorted(range(20, 40), key=lambda i: pages[i])
    assert {cut[i] for i in range(20)} == set(range(min(cut[:20]), min(cut[:20]) + 20))


def test_the_class_order_is_in_the_file_only_when_it_is_memcmp() -> None:
    proc = CapturedProcess(10, "a", "/bin/a", "/", False, None, [CapturedMapping(0x1000, 3)])
    flags = array("B", [PRESENT] * 3)
    salted = Capture([proc], flags, array("I", [0, 1, 2]), classes=3)
    assert b"class_order" not in salted.to_bytes()  # written as before
    assert load_capture(salted.to_bytes()).class_order == "salted"
    ordered = Capture([proc], flags, array("I", [0, 1, 2]), classes=3, class_order="memcmp")
    back = load_capture(ordered.to_bytes())
    assert back.class_order == "memcmp" and back.to_bytes() == ordered.to_bytes()
    bad = ordered.to_bytes().replace(b'"class_order":"memcmp"', b'"class_order":"sorted"')
    with pytest.raises(CaptureError, match="class order") as err:
        load_capture(bad)
    assert err.value.field == "class_order"


def stale_node_capture(order: str, pairs: int = 300, seed: int = 3) -> tuple[Capture, int]:
    """One process: a page U, then a huge page of zero-filled pages, then ``pairs``
    identical pairs (every class id a memcmp rank when ``order`` is "memcmp"). Returns the
    capture and how many pairs sort after U."""
    rng = random.Random(seed)
    ranks = list(range(1, pairs + 2))
    rng.shuffle(ranks)
    u, pair_cls = ranks[0], ranks[1:]
    maps = [CapturedMapping(0x10000, 1), CapturedMapping(0x200000, 512)]
    maps.append(CapturedMapping(0x800000, 2 * pairs))
    flags = array("B", [PRESENT] + [PRESENT | THP] * 512 + [PRESENT] * (2 * pairs))
    cls = array("I", [u] + [0] * 512 + pair_cls + pair_cls)
    for m in maps:
        m.mergeable = True
    proc = CapturedProcess(7, "p", "/bin/p", "/", False, None, maps)
    cap = Capture([proc], flags, cls, classes=pairs + 2, class_order=order)
    return cap, sum(1 for c in pair_cls if c > u)


def three_passes(cap: Capture, ordered: bool = True) -> list[int]:
    """pages_sharing after each of three passes of the simulated capture (one batch each;
    with ``ordered`` False only its order is applied, not its huge pages)."""
    knobs = {"use_zero_pages": 1, "smart_scan": 0, "pages_to_scan": 100_000}
    sc = capture_scenario(cap, "6.18", knobs)
    k = Kernel("6.18", sc.sysfs)
    st = Stepper(k, sc.steps)
    while st.in_scenario:
        st.feed(Next("batch"))
    if ordered:
        apply_capture(k, cap)
    else:
        apply_order(k, cap)
    out = []
    for _ in range(3):
        k.scan_batch()
        out.append(int(k.pages_sharing))
    return out


def test_walks_give_up_behind_the_split_by_the_captured_order() -> None:
    """U is the unstable tree's root in pass 2, the split's zero page its left child (the
    smallest page): a pair whose page sorts before U walks into it and gives up, a pair
    after U merges. So pass 2 merges exactly the pairs after U, pass 3 the others."""
    cap, after = stale_node_capture("memcmp")
    assert 0 < after < 300
    assert three_passes(cap) == [0, after, 300]
    # another order of the same memory: another pass 2
    cap2, after2 = stale_node_capture("memcmp", seed=11)
    assert after2 != after and three_passes(cap2) == [0, after2, 300]
    # a salted capture keeps the stand-in order of the labels: pass 2 is not the capture's
    salted, _ = stale_node_capture("salted")
    got = three_passes(salted)
    assert got[0] == 0 and got[1] != after and got[2] == 300
    # apply_order alone (no THP): no stale node, pass 2 merges every pair
    assert three_passes(cap, ordered=False) == [0, 300, 300]


def test_apply_order_orders_contents_as_classes() -> None:
    cap, _ = stale_node_capture("memcmp", pairs=40)
    sc = capture_scenario(cap, "6.18")
    k = Kernel("6.18", sc.sysfs)
    st = Stepper(k, sc.steps)
    while st.in_scenario:
        st.feed(Next("batch"))
    assert apply_order(k, cap) == 41
    contents = {}
    for pname, vname, m in sim_mappings(cap):
        pfns = k.procs[pname].vmas[vname].pfn
        for j in range(m.pages):
            c = cap.cls[m.first + j]
            if c:
                contents[c] = k.f_content[pfns[j]]
    by_class = sorted(contents)
    for a, b in pairwise(by_class):
        assert k.content_less(contents[a], contents[b])
        assert not k.content_less(contents[b], contents[a])
    assert all(k.content_less(0, c) for c in contents.values())  # the zero page first


def test_a_real_capture_in_memcmp_order() -> None:
    """This process's own mapping, read by the real reader: the classes follow the bytes,
    the pages that tie on their first 64 bytes included (read again, compared whole)."""
    rng = random.Random(5)
    tied = [b"\x07" * 1500 + rng.randbytes(PAGE - 1500) for _ in range(12)]
    free = [rng.randbytes(PAGE) for _ in range(12)]
    pages = tied + free + tied[:3] + [bytes(PAGE)]
    m = mmap.mmap(-1, len(pages) * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m.madvise(mmap.MADV_NOHUGEPAGE)
        for i, p in enumerate(pages):
            m[i * PAGE : (i + 1) * PAGE] = p
        m.madvise(mmap.MADV_MERGEABLE)  # to select this mapping; KSM is not started
        view = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(view)
        del view
        caps = {
            order: capture_processes([os.getpid()], mergeable_only=True, memcmp_order=order)
            for order in (True, False)
        }
    finally:
        m.close()
    for ordered, cap in caps.items():
        maps = [mp for _, mp in cap.mappings() if mp.start == addr]
        assert len(maps) == 1
        col = [maps[0].first + i for i in range(len(pages))]
        cls = [cap.cls[i] for i in col]
        assert cls[-1] == 0 and cls[24:27] == cls[:3]
        by_cls = sorted(range(24), key=lambda i: cls[i])
        by_bytes = sorted(range(24), key=lambda i: pages[i])
        assert cap.class_order == ("memcmp" if ordered else "salted")
        assert (by_cls == by_bytes) == ordered
