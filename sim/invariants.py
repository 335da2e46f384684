"""Structural invariants of the model, checked by tests after every step.

Like the kernel's ``VM_BUG_ON`` sites, these must hold at any point between operations:

1. every page reads back what its process last wrote (KSM never changes contents);
2. every frame's map count equals the PTEs mapping it; KSM PTEs are read-only;
3. a KSM frame's stable node exists, is alive and points back at the frame;
4. every counter equals a recomputation from the structures (rmap_items, stable and
   unstable items, shared/sharing, chains/dups, zero pages, per-process counters);
5. ksmd's list holds exactly the registered processes, once each;
6. the stable tree is a valid red-black tree of exactly the regular nodes and chains, in
   memcmp order of their contents; ``dead_nodes`` counts the nodes whose frame died.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from .errors import InvariantError
from .mm import ITEM_STABLE, ITEM_UNSTABLE, PTE_DIRTY, PTE_WRITE, Vma
from .rbtree import RbNode, rb_check
from .state import StableNode

if TYPE_CHECKING:
    from .kernel import Kernel


def _fail(message: str) -> None:
    raise InvariantError(message)


def _check_segments(k: Kernel, vma: Vma) -> None:
    """The mapping's VMAs tile it, each with one VM_MERGEABLE value; pages need anon_vma."""
    pos = 0
    for start, end, anon in vma.segs:
        if start != pos or end <= start:
            _fail(f"{vma!r}: VMAs do not tile the mapping: {vma.segs}")
        if len(set(vma.mergeable[start:end])) != 1:
            _fail(f"{vma!r}: VMA [{start}, {end}) has mixed VM_MERGEABLE")
        if not anon and any(pfn > 0 for pfn in vma.pfn[start:end]):
            _fail(f"{vma!r}: anonymous page in VMA [{start}, {end}) without anon_vma")
        pos = end
    if pos != vma.npages:
        _fail(f"{vma!r}: VMAs end at {pos}, not {vma.npages}")


def check_invariants(k: Kernel) -> None:
    """Raise :class:`InvariantError` on the first broken invariant."""
    maps: Counter[int] = Counter()
    zero_total = 0
    for mm in k.procs.values():
        zero_mm = 0
        for vma in mm.vmas.values():
            _check_segments(k, vma)
            for i in range(vma.npages):
                pfn = vma.pfn[i]
                if pfn > 0:
                    maps[pfn] += 1
                    if k.f_content[pfn] != vma.shadow[i]:
                        _fail(
                            f"{vma!r}[{i}] reads content {k.f_content[pfn]}, wrote {vma.shadow[i]}"
                        )
                    if k.f_node[pfn] >= 0 and vma.pte[i] & PTE_WRITE:
                        _fail(f"{vma!r}[{i}] maps KSM frame {pfn} writable")
                elif vma.shadow[i] != 0:
                    _fail(f"{vma!r}[{i}] reads zeros, wrote {vma.shadow[i]}")
                if pfn == 0 and vma.pte[i] & PTE_DIRTY and k.profile.zero_page_series:
                    zero_mm += 1
        if k.profile.zero_page_series and mm.ksm_zero_pages != zero_mm:
            _fail(f"{mm.name}: ksm_zero_pages {mm.ksm_zero_pages} != {zero_mm} marked PTEs")
        zero_total += zero_mm
    if k.profile.zero_page_series and k.ksm_zero_pages != zero_total:
        _fail(f"ksm_zero_pages {k.ksm_zero_pages} != {zero_total} marked PTEs")
    free = set(k.free_pfns)
    for pfn in range(1, len(k.f_map)):
        if pfn in free:
            if maps[pfn]:
                _fail(f"free frame {pfn} is mapped")
            continue
        if k.f_map[pfn] != maps[pfn]:
            _fail(f"frame {pfn}: map count {k.f_map[pfn]} != {maps[pfn]} PTEs")
        nid = k.f_node[pfn]
        if nid >= 0:
            node = k.nodes.get(nid)
            if node is None or node.dead or node.pfn != pfn:
                _fail(f"KSM frame {pfn}: bad stable node {node!r}")

    # rmap_items and tree counters
    items = unstable = stable = 0
    per_mm: Counter[str] = Counter()
    merging: Counter[str] = Counter()
    node_items: dict[int, set[int]] = {}
    for vma in k.vmas_by_uid.values():
        n = 0
        for i in range(vma.npages):
            st = vma.it_state[i]
            if not st:
                continue
            n += 1
            if st == ITEM_UNSTABLE:
                unstable += 1
            elif st == ITEM_STABLE:
                stable += 1
                merging[vma.mm.name] += 1
                node_items.setdefault(vma.it_node[i], set()).add(k.key(vma, i))
        if n != vma.nitems:
            _fail(f"{vma!r}: nitems {vma.nitems} != {n}")
        items += n
        per_mm[vma.mm.name] += n
    if items != k.ksm_rmap_items:
        _fail(f"ksm_rmap_items {k.ksm_rmap_items} != {items} items")
    if unstable != k.pages_unshared:
        _fail(f"pages_unshared {k.pages_unshared} != {unstable} unstable items")
    shared = sharing = chains = dups = 0
    for nid, node in k.nodes.items():
        if node.kind == StableNode.CHAIN:
            chains += 1
            if k.stable.get(node.content) is not node:
                _fail(f"chain {nid} is not in the stable tree")
            for dup in node.dups:
                if dup.kind != StableNode.DUP or dup.chain is not node:
                    _fail(f"chain {nid}: bad dup {dup!r}")
            continue
        if node.kind == StableNode.DUP:
            dups += 1
        elif k.stable.get(node.content) is not node:
            _fail(f"regular node {nid} is not in the stable tree")
        if set(node.items) != node_items.get(nid, set()) or len(set(node.items)) != len(node.items):
            _fail(f"node {nid}: items {len(node.items)} != {len(node_items.get(nid, ()))}")
        if node.items:
            shared += 1
            sharing += len(node.items) - 1
    if (shared, sharing) != (k.pages_shared, k.pages_sharing):
        _fail(f"pages_shared/sharing {k.pages_shared}/{k.pages_sharing} != {shared}/{sharing}")
    if (chains, dups) != (k.stable_node_chains, k.stable_node_dups):
        _fail(f"chains/dups {k.stable_node_chains}/{k.stable_node_dups} != {chains}/{dups}")
    _check_stable_tree(k)
    for nid in node_items:
        if nid not in k.nodes:
            _fail(f"items point at missing stable node {nid}")
    for csum, key in k.unstable.items():
        v, i = k.vma_of(key)
        if v.it_state[i] != ITEM_UNSTABLE or v.it_sum[i] != csum:
            _fail(f"unstable tree entry {csum} -> {v!r}[{i}] is stale")
    for mm in k.procs.values():
        want_items = per_mm[mm.name] + mm.fork_offset_items
        want_merging = merging[mm.name] + mm.fork_offset_merging
        if (mm.ksm_rmap_items, mm.ksm_merging_pages) != (want_items, want_merging):
            _fail(
                f"{mm.name}: rmap_items/merging {mm.ksm_rmap_items}/"
                f"{mm.ksm_merging_pages} != {want_items}/{want_merging}"
            )

    # ksmd's list
    if len(set(map(id, k.slots))) != len(k.slots):
        _fail("an mm is on ksmd's list twice")
    for mm in k.slots:
        if not mm.registered:
            _fail(f"{mm.name} is on ksmd's list but not registered")
    for mm in k.procs.values():
        if mm.registered and mm not in k.slots:
            _fail(f"{mm.name} is registered but not on ksmd's list")
    if k.cursor is not None and k.cursor not in k.slots:
        _fail("ksmd's cursor is on an mm that left the list")


def _check_stable_tree(k: Kernel) -> None:
    """Invariant 6: the red-black tree, its order, the content index and ``dead_nodes``."""
    try:
        rb_check(k.stable_root)
    except AssertionError as exc:
        _fail(f"stable tree: {exc}")
    in_order: list[StableNode] = []
    stack: list[RbNode] = []
    node = k.stable_root.node
    while stack or node is not None:
        while node is not None:
            stack.append(node)
            node = node.rb_left
        top = stack.pop()
        assert isinstance(top, StableNode)
        in_order.append(top)
        node = top.rb_right
    if {n.nid for n in in_order} != {n.nid for n in k.stable.values()} or len(in_order) != len(
        k.stable
    ):
        _fail("stable tree: its nodes are not the content index's")
    for a, b in zip(in_order, in_order[1:], strict=False):
        if not k.content_less(a.content, b.content):
            _fail(f"stable tree: {a!r} and {b!r} out of memcmp order")
    for n in in_order:
        if n.kind == StableNode.DUP:
            _fail(f"stable tree: dup {n!r} is a tree node")
    dead = sum(1 for n in k.nodes.values() if n.dead)
    if dead != k.dead_nodes:
        _fail(f"dead_nodes {k.dead_nodes} != {dead} stable nodes with a dead frame")
