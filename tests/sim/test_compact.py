"""The compact structures of large sessions (issue 18) behave as the plain ones they replace:
the unstable tree's chunked index as a dict, ``seq_array`` as ``array(range)``, a range
written at once as the same range written page by page, the short label digest as the
prefix of the page's bytes."""

from __future__ import annotations

import random
from array import array

import pytest

from sim import Kernel, check_invariants
from sim.contents import ORDER_BYTES, order_bytes, page_bytes
from sim.mm import seq_array
from sim.unstable import CHUNK, UnstableIndex


def test_unstable_index_is_a_dict() -> None:
    rng = random.Random(18)
    index = UnstableIndex()
    plain: dict[int, int] = {}
    for step in range(20_000):
        content = rng.choice((rng.randrange(3 * CHUNK), rng.randrange(1 << 31)))
        op = rng.random()
        if op < 0.5:
            key = rng.randrange(1 << 40)
            index[content] = key
            plain[content] = key
        elif op < 0.8 and plain:
            victim = rng.choice(list(plain)) if op < 0.7 else content
            if victim in plain:
                del index[victim]
                del plain[victim]
            else:
                with pytest.raises(KeyError):
                    del index[victim]
        elif op < 0.81:
            index.clear()
            plain.clear()
        assert index.get(content) == plain.get(content)
        assert (content in index) == (content in plain)
        assert len(index) == len(plain)
        if step % 1000 == 0:
            assert list(index.items()) == sorted(plain.items())
    assert len(index.chunks) == len({c // CHUNK for c in plain})


@pytest.mark.parametrize(
    ("start", "n"), [(0, 0), (0, 1), (65_535, 3), (70_000, 200_000), ((1 << 31) - 10, 10)]
)
def test_seq_array(start: int, n: int) -> None:
    assert seq_array(start, n) == array("i", range(start, start + n))


@pytest.mark.parametrize("label", ["zero", "D0", "a label"])
def test_order_bytes_are_the_page_prefix(label: str) -> None:
    assert order_bytes(label) == page_bytes(label)[:ORDER_BYTES]


def _session(record: bool, one_by_one: bool) -> Kernel:
    k = Kernel("6.18", {"use_zero_pages": 1}, record=record)
    k.spawn("A")
    k.mmap("A", "heap", 300)
    k.madvise("A", "heap", ((100, 200),), "MADV_MERGEABLE")
    plan = [((0, 300), "unique"), ((10, 50), "x"), ((250, 300), "zero"), ((40, 120), "unique")]
    for (lo, hi), content in plan:
        if one_by_one:
            for i in range(lo, hi):
                k.write("A", "heap", ((i, i + 1),), content)
        else:
            k.write("A", "heap", ((lo, hi),), content)
    k.spawn("B")
    k.mmap("B", "heap", 64)
    k.write("B", "heap", None, "unique")
    return k


@pytest.mark.parametrize("record", [False, True])
def test_a_range_written_at_once_equals_page_by_page(record: bool) -> None:
    a, b = _session(record, False), _session(record, True)
    for k in (a, b):
        check_invariants(k)
        k.scan(3)
        check_invariants(k)
    for name in ("f_content", "f_map", "f_node", "free_pfns"):
        assert getattr(a, name) == getattr(b, name), name
    for proc in ("A", "B"):
        va, vb = a.vma(proc, "heap"), b.vma(proc, "heap")
        for field in ("pfn", "pte", "shadow", "it_state", "it_sum", "mergeable"):
            assert getattr(va, field) == getattr(vb, field), (proc, field)
        assert va.segs == vb.segs
    assert a.checkpoint("end") == b.checkpoint("end")
    if record:
        la, lb = a.take_changes(), b.take_changes()
        assert la.events == lb.events
        assert la.pages == lb.pages and la.frames == lb.frames
