"""The compact structures of large sessions (issue 18) behave as the plain ones they replace:
the unstable tree's chunked index as a dict, a stable node's items (a range while they are
consecutive) as a list, ``seq_array`` as ``array(range)``, a range written at once as the
same range written page by page, the short label digest as the prefix of the page's
bytes."""

from __future__ import annotations

import gc
import random
from array import array
from collections.abc import Callable

import pytest

from sim import Kernel, check_invariants
from sim.contents import ORDER_BYTES, order_bytes, page_bytes
from sim.mm import SEQ_SHORT, Vma, seq_array
from sim.state import StableNode, add_items, remove_item
from sim.unstable import CHUNK, UnstableIndex, key_run


def test_unstable_index_is_a_dict() -> None:
    """Random sets, runs, deletions and clears: the index answers as a dict would, whichever
    way its chunks hold their entries (spans that grow, shrink or get written out)."""
    rng = random.Random(18)
    index = UnstableIndex()
    plain: dict[int, int] = {}
    deltas = (1 << 32, 5 << 32, 7)
    for step in range(20_000):
        content = rng.choice((rng.randrange(3 * CHUNK), rng.randrange(1 << 31)))
        op = rng.random()
        if op < 0.4:
            key = rng.randrange(1 << 40)
            index[content] = key
            plain[content] = key
        elif op < 0.6:
            start = rng.randrange(4 * CHUNK)
            n = rng.choice((1, 2, rng.randrange(1, 3 * CHUNK)))
            delta = rng.choice(deltas)
            free = all(c not in plain for c in range(start, start + n))
            assert index.set_run(start, start + delta, n) == free
            if free:
                plain.update((c, c + delta) for c in range(start, start + n))
            for edge in (start - 1, start, start + n - 1, start + n):
                assert index.get(edge) == plain.get(edge)
            content = start + n - 1
        elif op < 0.85 and plain:
            victim = rng.choice(list(plain)) if op < 0.75 else content
            if victim in plain:
                del index[victim]
                del plain[victim]
            else:
                with pytest.raises(KeyError):
                    del index[victim]
        elif op < 0.86:
            index.clear()
            plain.clear()
        assert index.get(content) == plain.get(content)
        assert (content in index) == (content in plain)
        assert len(index) == len(plain)
        if step % 500 == 0:
            assert list(index.items()) == sorted(plain.items())
            assert all(index[c] == k for c, k in plain.items())
    assert len(index.chunks) == len({c // CHUNK for c in plain})
    assert sum(index.counts.values()) == len(plain)


def test_node_items_are_a_list() -> None:
    """Random additions (single keys and runs, following on or not) and removals (either
    end, the middle, absent keys): a node's items are the list of the keys added, in
    order, whether they are held as a range or an array; a range while they are
    consecutive."""
    rng = random.Random(18)
    for trial in range(300):
        node = StableNode(1, StableNode.REGULAR, 5, 9)
        plain: list[int] = []
        base = rng.choice((0, 3 << 32, (1 << 40) + 77))
        for _ in range(rng.randrange(1, 40)):
            op = rng.random()
            if op < 0.6:
                nxt = plain[-1] + 1 if plain else base
                key = nxt if rng.random() < 0.8 else nxt + rng.randrange(2, 9)
                if key in plain:
                    continue
                n = rng.choice((1, 1, 2, rng.randrange(1, 20)))
                if any(k in plain for k in range(key, key + n)):
                    continue
                add_items(node, key, n)
                plain.extend(range(key, key + n))
            elif plain and op < 0.9:
                key = rng.choice((plain[0], plain[-1], rng.choice(plain)))
                remove_item(node, key)
                plain.remove(key)
            else:
                key = base - 1 - rng.randrange(5)
                with pytest.raises(ValueError):
                    remove_item(node, key)
            assert list(node.items) == plain, trial
            assert len(node.items) == len(plain) and bool(node.items) == bool(plain)
            if isinstance(node.items, array):
                assert node.items.typecode == "q"
            else:
                assert plain == list(range(plain[0], plain[0] + len(plain)) if plain else [])


def test_a_run_of_merged_pages_keeps_its_items_as_a_range() -> None:
    """The duplicates of the large-session workload: each label's KSM page lists its 16
    pages as a range (no array, no buffer); a page unmerged at either end (its item leaves
    the node when ksmd next meets it) keeps the range, one in the middle turns it into an
    array, and the counters follow."""
    k = Kernel("6.18", {"use_zero_pages": 1, "smart_scan": 0})
    k.spawn("A")
    k.mmap("A", "heap", 64)
    for j in range(4):
        k.write("A", "heap", ((16 * j, 16 * j + 16),), f"D{j}")
    k.madvise("A", "heap", None, "MADV_MERGEABLE")
    for _ in range(2):
        k.scan_pass()
    nodes = sorted(k.nodes.values(), key=lambda n: n.nid)
    assert [type(n.items) for n in nodes] == [range] * 4
    assert [len(n.items) for n in nodes] == [16] * 4
    assert k.pages_shared == 4 and k.pages_sharing == 60
    k.madvise("A", "heap", ((0, 1),), "MADV_UNMERGEABLE")  # the first page of D0
    k.madvise("A", "heap", ((31, 32),), "MADV_UNMERGEABLE")  # the last page of D1
    k.madvise("A", "heap", ((40, 41),), "MADV_UNMERGEABLE")  # a middle page of D2
    k.scan_pass()
    assert [type(n.items) for n in nodes] == [range, range, array, range]
    assert [len(n.items) for n in nodes] == [15, 15, 15, 16]
    assert k.pages_shared == 4 and k.pages_sharing == 57
    check_invariants(k)


def test_unstable_runs_are_kept_as_spans() -> None:
    """A mapping's runs of consecutive contents, in order, cost a span per chunk, not slots."""
    index = UnstableIndex()
    start, key = 3 * CHUNK + 17, (4 << 32) | 100
    for w in range(10):
        assert index.set_run(start + w * 1000, key + w * 1000, 1000)
    assert all(type(chunk) is tuple for chunk in index.chunks.values())
    assert len(index) == 10_000
    assert index.get(start + 5_432) == key + 5_432 and index.get(start - 1) is None
    del index[start + 5_432]  # inside a span: its chunk is written out
    assert index.get(start + 5_432) is None and index.get(start + 5_433) == key + 5_433
    assert sum(type(chunk) is array for chunk in index.chunks.values()) == 1
    # a run that ends where a span starts grows it downwards
    base = 100 * CHUNK
    assert index.set_run(base + 100, key + 100, 50) and index.set_run(base + 40, key + 40, 60)
    assert index.chunks[100] == (key - base, 40, 150)
    assert [index.get(base + c) for c in (39, 40, 99, 100, 149, 150)] == [
        None,
        key + 40,
        key + 99,
        key + 100,
        key + 149,
        None,
    ]


@pytest.mark.parametrize(
    ("start", "n"),
    [
        (0, 0),
        (0, 1),
        (65_535, 3),
        (65_530, 64),
        (12_345, SEQ_SHORT),
        ((1 << 31) - SEQ_SHORT, SEQ_SHORT),
        (99, SEQ_SHORT + 1),
        (70_000, 200_000),
        ((1 << 31) - 10, 10),
    ],
)
def test_seq_array(start: int, n: int) -> None:
    assert seq_array(start, n) == array("i", range(start, start + n))


@pytest.mark.parametrize(
    ("key", "n"),
    [(0, 0), ((3 << 32) | 5, 1), ((7 << 32) | 1000, SEQ_SHORT), ((1 << 32) | 9, SEQ_SHORT + 7)],
)
def test_key_run(key: int, n: int) -> None:
    assert key_run(key, n) == array("q", range(key, key + n))


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


# ---------------------------------------------------------------- runs of pages at once
CONTENTS = ("zero", "zero", "unique", "unique", "unique", "A", "B")


def state_of(k: Kernel) -> tuple[object, ...]:
    """Everything a step can change, for comparing two kernels."""
    vmas = []
    for uid, v in sorted(k.vmas_by_uid.items()):
        vmas.append(
            (
                uid,
                v.dead,
                v.nitems,
                [list(s) for s in v.segs],
                *(
                    bytes(getattr(v, f))
                    for f in (
                        "pfn",
                        "pte",
                        "mergeable",
                        "it_state",
                        "it_sum",
                        "it_age",
                        "it_skip",
                        "it_node",
                        "it_skipped",
                        "shadow",
                    )
                ),
            )
        )
    nodes = sorted(
        (n.nid, n.kind, n.content, n.pfn, list(n.items), n.dead) for n in k.nodes.values()
    )
    mms = sorted(
        (m.name, m.ksm_rmap_items, m.ksm_merging_pages, m.ksm_zero_pages, m.registered)
        for m in k.procs.values()
    )
    cursor = (None if k.cursor is None else k.cursor.name, k.cursor_addr, k.seqnr)
    return (
        vmas,
        nodes,
        mms,
        cursor,
        bytes(k.f_content),
        bytes(k.f_map),
        bytes(k.f_node),
        bytes(k.free_pfns),
        sorted(k.unstable.items()),
        k.global_counters(),
        k.ksm_revisits,
    )


def tally(
    k: Kernel, method: str, amount: Callable[[int], int] = lambda got: max(got, 0)
) -> list[int]:
    """Wrap ``k``'s ``method`` to add ``amount(result)`` of each call to the returned
    one-item list (the number of pages a run path handled, or of its calls)."""
    total = [0]
    inner = getattr(k, method)

    def counting(*args: object) -> int:
        got = inner(*args)
        total[0] += amount(got)
        return int(got)

    setattr(k, method, counting)
    return total


@pytest.mark.parametrize("seed", range(30))
def test_runs_at_once_equal_page_by_page(seed: int) -> None:
    rng = random.Random(seed)
    kernel = ("6.18", "6.12")[seed % 2]
    sysfs = {
        "use_zero_pages": rng.choice((0, 1, 1)),
        "pages_to_scan": rng.choice((50, 333, 5000)),
        "smart_scan": 0,
    }
    fast, slow = Kernel(kernel, sysfs), Kernel(kernel, sysfs)
    slow.scan_runs = False
    counter = 0
    handled = tally(fast, "_scan_run")
    revisits = tally(fast, "_revisit_run")
    stretches = tally(fast, "_free_zero_stretch", lambda _: 1)
    firsts = tally(fast, "_first_sight_run")
    for step in range(60):
        procs = sorted(fast.procs)
        vmas = [(p, v) for p in procs for v in fast.procs[p].vmas]
        op = rng.choice(
            ("mmap", "mmap", "write", "write", "madvise", "fork", "knob") + ("scan",) * 8
        )
        calls: list[tuple[str, tuple[object, ...]]] = []
        if step in (1, 2):
            op = "scan_pass"
        elif step == 0:
            op = "mmap"
        if op == "scan_pass":
            calls.append(("scan_pass", ()))
        elif op == "mmap" or not procs:
            counter += 1
            proc = rng.choice(procs) if procs and rng.random() < 0.5 else f"p{counter}"
            n = rng.randint(32, 700)
            if proc not in fast.procs:
                calls.append(("spawn", (proc,)))
            name = f"v{counter}"
            calls.append(("mmap", (proc, name, n)))
            q = rng.randint(0, n) if step else n
            first = "unique" if step == 0 else rng.choice(CONTENTS)
            calls.append(("write", (proc, name, ((0, q),), first)))
            if q < n:
                calls.append(("write", (proc, name, ((q, n),), rng.choice(CONTENTS))))
            calls.append(("madvise", (proc, name, None, "MADV_MERGEABLE")))
        elif op in ("write", "madvise") and vmas:
            proc, name = rng.choice(vmas)
            n = fast.vma(proc, name).npages
            lo = rng.randrange(n)
            pages = ((lo, rng.randint(lo + 1, n)),)
            if op == "write":
                calls.append(("write", (proc, name, pages, rng.choice(CONTENTS))))
            else:
                advice = rng.choice(("MADV_MERGEABLE", "MADV_UNMERGEABLE"))
                calls.append(("madvise", (proc, name, pages, advice)))
        elif op == "fork" and len(procs) < 4:
            counter += 1
            calls.append(("fork", (rng.choice(procs), f"p{counter}")))
        elif op == "knob":
            knob, value = rng.choice(
                (("max_page_sharing", "2"), ("use_zero_pages", "0"), ("use_zero_pages", "1"))
                + (("pages_to_scan", "77"), ("smart_scan", "0"), ("smart_scan", "1"))
            )
            calls.append(("sysfs_write", (knob, value)))
        else:
            grain = rng.choice(("scan_page", "scan_batch", "scan_batch", "scan_pass"))
            calls.append((grain, ()))
        for method, args in calls:
            outcomes = []
            for k in (fast, slow):
                try:
                    outcomes.append(("ok", getattr(k, method)(*args)))
                except Exception as exc:  # noqa: BLE001 - both must fail alike
                    outcomes.append(("error", repr(exc)))
            assert outcomes[0] == outcomes[1], (method, args)
        assert state_of(fast) == state_of(slow), calls
        check_invariants(fast)
    assert handled[0] > 0
    revisit_runs.append(revisits[0])
    zero_stretches.append(stretches[0])
    first_sights.append(firsts[0])


revisit_runs: list[int] = []
zero_stretches: list[int] = []
first_sights: list[int] = []


def test_revisit_runs_happened() -> None:
    """Runs of KSM pages met again on their node were among the runs compared above."""
    if len(revisit_runs) < 30:
        pytest.skip("needs the whole test_runs_at_once_equal_page_by_page before it")
    assert sum(1 for n in revisit_runs if n) >= 10
    assert sum(1 for n in zero_stretches if n) >= 10  # and stretches of zero pages freed
    # and runs of pages met for the first time (their items made, checksums recorded)
    assert sum(1 for n in first_sights if n) >= 10


def test_a_big_batch_pauses_the_collector_and_restores_it() -> None:
    k = Kernel("6.18", {"smart_scan": 0, "pages_to_scan": 100})
    k.spawn("A")
    k.mmap("A", "heap", 5000)
    k.write("A", "heap", None, "unique")
    k.madvise("A", "heap", None, "MADV_MERGEABLE")
    seen: list[bool] = []
    run = k._scan_run

    def spy(vma: Vma, i: int, budget: int, windows: bool) -> int:
        seen.append(gc.isenabled())
        return run(vma, i, budget, windows)

    k._scan_run = spy  # type: ignore[method-assign]
    assert gc.isenabled()
    k.scan_pass()
    assert seen and not any(seen)  # a whole pass: paused
    assert gc.isenabled()  # and back on after it
    seen.clear()
    k.scan_batch()
    assert seen and all(seen)  # a batch of 100 pages: left alone
    gc.disable()
    try:
        k.scan_pass()
        assert not gc.isenabled()  # off before: still off after
    finally:
        gc.enable()
