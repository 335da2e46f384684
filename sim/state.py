"""The simulated machine's state and its lowest-level primitives.

:class:`KsmState` holds everything: page frames, processes, ksmd's mm_slot list and
cursor (``struct ksm_scan``), the stable tree (a red-black tree, :mod:`sim.rbtree`, ordered
by the contents' page bytes, :mod:`sim.contents`) and the unstable tree, every counter, and
the format's clock (``clock_ms``, read by the chain prune timer). The layers
above it (stable tree, scanner, process operations, knobs) are mixins stacked in that order
and composed by :class:`sim.kernel.Kernel`.

Frames are columnar: ``f_content[pfn]`` (content id, 0 = all-zero bytes),
``f_map[pfn]`` (map count: PTEs mapping it, in any process) and ``f_node[pfn]`` (the
stable node id of a KSM frame, -1 for an ordinary anonymous page). Pfn 0 is the shared zero
page. Freed pfns are reused lowest-first, deterministically.
"""

from __future__ import annotations

from array import array
from typing import Any, cast

from .changes import KEY_MASK, KEY_SHIFT, ChangeLog
from .contents import order_bytes, page_bytes, unique_bytes
from .errors import OpError
from .mm import ITEM_ABSENT, ITEM_NONE, NO_CHECKSUM, MmStruct, Vma
from .profiles import Profile
from .rbtree import RbNode, RbRoot, rb_insert_color, rb_link_node
from .unstable import UnstableIndex, key_run

ZERO_CONTENT = 0
#: content ids are stored as 32-bit signed integers
MAX_CONTENT = (1 << 31) - 1


#: the dups of a node that is not a chain (see StableNode.dups)
_NO_DUPS = cast("list[StableNode]", ())
#: the items of a node that has none (see StableNode.items)
NO_ITEMS = range(0)


def add_items(node: StableNode, key: int, n: int = 1) -> None:
    """The page keys ``key`` .. ``key + n - 1`` join a node's items, in that order (the
    rmap_items added to its rmap_hlist, see :attr:`StableNode.items`)."""
    items = node.items
    if type(items) is range:
        if not items:
            node.items = range(key, key + n)
            return
        if items.stop == key:
            node.items = range(items.start, key + n)
            return
        items = node.items = array("q", items)
    if n == 1:
        items.append(key)
    else:
        items.extend(key_run(key, n))


def remove_item(node: StableNode, key: int) -> None:
    """A page key leaves a node's items (ValueError if it is not one of them)."""
    items = node.items
    if type(items) is range:
        if items and key == items.start:
            node.items = range(key + 1, items.stop)
            return
        if items and key == items.stop - 1:
            node.items = range(items.start, key)
            return
        items = node.items = array("q", items)
    items.remove(key)


class StableNode(RbNode):
    """``struct ksm_stable_node``: a regular node, a chain, or a dup inside a chain.

    A regular node or dup stands for one KSM frame (``pfn``) and lists its rmap_items
    (``items``, page keys; ``rmap_hlist_len`` is their number). A chain lists its dups,
    head first, and keeps ``prune_time`` (``chain_prune_time``: the clock at its creation or
    last prune). Regular nodes and chains are nodes of the stable red-black tree (the
    :class:`~sim.rbtree.RbNode` links); dups are not.
    """

    __slots__ = (
        "nid",
        "kind",
        "content",
        "pfn",
        "items",
        "dups",
        "chain",
        "dead",
        "prune_time",
        "memo",
        "memo_prune",
        "order",
    )

    REGULAR = "regular"
    CHAIN = "chain"
    DUP = "dup"

    def __init__(self, nid: int, kind: str, content: int, pfn: int = -1):
        super().__init__()
        self.nid = nid
        self.kind = kind
        self.content = content
        self.pfn = pfn
        #: page keys of the rmap_items on this node (rmap_hlist), in the order they joined;
        #: while they are consecutive keys (a run of pages merged in order, as most are) a
        #: range, which has no buffer of its own (two objects and some 200 bytes fewer for
        #: each KSM page of a large session), else an array of 8 bytes each; changed by
        #: add_items and remove_item, emptied to NO_ITEMS.
        self.items: array[int] | range = NO_ITEMS
        #: a chain's dups; other nodes share one empty tuple (one object fewer per node for
        #: the memory and the garbage collector; mutating it fails loudly)
        self.dups: list[StableNode] = [] if kind == StableNode.CHAIN else _NO_DUPS
        self.chain: StableNode | None = None
        #: the KSM frame was freed (all its mappings gone); removed when next touched
        self.dead = False
        self.prune_time = 0
        #: a chain's last look-up without (``memo``) and with pruning: (tree_gen, choice),
        #: kept while ``tree_gen`` says no dup changed since (it then had no side effect)
        self.memo: tuple[int, StableNode | None] | None = None
        self.memo_prune: tuple[int, StableNode | None] | None = None
        #: the leading page bytes of its content (KsmState.content_order), set by the tree
        self.order = b""

    def __repr__(self) -> str:
        return f"<StableNode {self.nid} {self.kind} pfn={self.pfn} items={len(self.items)}>"


class KsmState:
    """All state of the simulated machine (see the module docstring)."""

    profile: Profile

    def _init_state(self, profile: Profile) -> None:
        self.profile = profile
        # frames
        self.f_content = array("i", [ZERO_CONTENT])
        self.f_map = array("i", [0])
        self.f_node = array("i", [-1])
        #: freed pfns, reused last-freed first (deterministic)
        self.free_pfns = array("i")
        # contents: 0 = zero, labels interned, "unique" draws fresh ids
        self.labels: dict[str, int] = {"zero": ZERO_CONTENT}
        #: leading page bytes of zero and of each label, for the trees' memcmp order
        self.content_bytes: dict[int, bytes] = {ZERO_CONTENT: order_bytes("zero")}
        self.next_content = 1
        # processes
        self.procs: dict[str, MmStruct] = {}
        self.vmas_by_uid: dict[int, Vma] = {}
        self.next_uid = 1
        self.next_pid = 1000
        self.next_order = 0
        self.next_anon = 0
        # ksmd: mm_slot list (without the head sentinel) and the ksm_scan cursor
        self.slots: list[MmStruct] = []
        self.cursor: MmStruct | None = None  # None: the head sentinel
        #: ksm_scan.address: the next page number to look at in the cursor's mm
        self.cursor_addr = 0
        self.cursor_seen_mergeable = False
        self.seqnr = 0
        # trees: the stable tree is a red-black tree (``stable_root``) ordered by the page
        # bytes of the nodes' contents; ``stable`` indexes its nodes by content
        self.nodes: dict[int, StableNode] = {}
        self._stable_root = RbRoot()
        self.stable: dict[int, StableNode] = {}
        #: 1 at each content id that has a node in ``stable`` (a range of contents is
        #: checked with one ``find``; a dict look-up per content grew slower with the dict)
        self.stable_has = bytearray()
        #: regular nodes inserted but not yet linked into ``_stable_root``, in insertion
        #: order (see :attr:`stable_root`)
        self.stable_pending: list[StableNode] = []
        #: stable nodes whose frame died, not yet removed from the tree
        self.dead_nodes = 0
        #: advances on every change a chain look-up depends on (dups, their items, deaths)
        self.tree_gen = 0
        self.unstable = UnstableIndex()
        self.next_nid = 1
        # global counters
        self.pages_shared = 0
        self.pages_sharing = 0
        self.pages_unshared = 0
        self.ksm_rmap_items = 0
        self.pages_scanned = 0
        self.pages_skipped = 0
        self.ksm_zero_pages = 0
        self.stable_node_chains = 0
        self.stable_node_dups = 0
        #: the format's clock (ms): 200 ms after each pass of a ``scan`` step (prune timer)
        self.clock_ms = 0
        # knobs
        self.knobs: dict[str, Any] = {}
        self.log: ChangeLog | None = None

    # ---------------------------------------------------------- stable tree
    @property
    def stable_root(self) -> RbRoot:
        """The stable red-black tree, every inserted node linked.

        An insert made while no walk can observe the tree (no chain, no dead node: a search
        is then a look-up of ``stable``, and an insert's walk only finds where to link)
        waits in ``stable_pending``; whatever reads the tree's shape goes through this
        property, which first links the waiting nodes in insertion order, each by the walk
        and ``rb_insert_color`` it would have had at once: the same shape, paid only when
        someone looks.
        """
        if self.stable_pending:
            self._link_pending()
        return self._stable_root

    def _stable_index(self, content: int, node: StableNode) -> None:
        """``stable[content] = node`` for a content that had no node."""
        self.stable[content] = node
        has = self.stable_has
        if content >= len(has):
            has.extend(bytes(content + 1 - len(has)))
        has[content] = 1

    def _stable_unindex(self, content: int) -> None:
        """``del stable[content]``."""
        del self.stable[content]
        self.stable_has[content] = 0

    def _link_pending(self) -> None:
        """stable_tree_insert's walk and link, for each waiting node in insertion order."""
        root = self._stable_root
        content_less = self.content_less
        pending = self.stable_pending
        self.stable_pending = []
        for node in pending:
            content = node.content
            key = node.order = self.content_order(content)
            parent: RbNode | None = None
            left = False
            here = root.node
            while here is not None:
                assert isinstance(here, StableNode)
                nkey = here.order
                parent = here
                left = key < nkey if key != nkey else content_less(content, here.content)
                here = here.rb_left if left else here.rb_right
            rb_link_node(node, parent, left, root)
            rb_insert_color(node, root)

    # ----------------------------------------------------------------- keys
    def vma_of(self, key: int) -> tuple[Vma, int]:
        return self.vmas_by_uid[key >> KEY_SHIFT], key & KEY_MASK

    @staticmethod
    def key(vma: Vma, idx: int) -> int:
        return (vma.uid << KEY_SHIFT) | idx

    def _event(self, kind: str, vma: Vma | None = None, idx: int = 0) -> None:
        if self.log is not None:
            self.log.event(kind, -1 if vma is None else (vma.uid << KEY_SHIFT) | idx)

    # --------------------------------------------------------------- frames
    def content_id(self, label: str) -> int:
        """Content id of a write's ``content`` (a fresh id for each "unique" page)."""
        if self.next_content >= MAX_CONTENT:
            raise OpError("this session has written more distinct contents than it can track")
        if label == "unique":
            self.next_content += 1
            return self.next_content - 1
        cid = self.labels.get(label)
        if cid is None:
            cid = self.labels[label] = self.next_content
            self.content_bytes[cid] = order_bytes(label)
            self.next_content += 1
        return cid

    def content_order(self, content: int) -> bytes:
        """The leading page bytes memcmp compares first (a stand-in for unique pages)."""
        data = self.content_bytes.get(content)
        return unique_bytes(content) if data is None else data

    def content_less(self, a: int, b: int) -> bool:
        """memcmp(page of a, page of b) < 0, for two different contents."""
        ka, kb = self.content_order(a), self.content_order(b)
        if ka != kb:
            return ka < kb
        names = {cid: label for label, cid in self.labels.items()}
        return page_bytes(names[a]) < page_bytes(names[b])

    def _alloc_frame(self, content: int) -> int:
        if self.free_pfns:
            pfn = self.free_pfns.pop()
            self.f_content[pfn] = content
            self.f_map[pfn] = 1
            self.f_node[pfn] = -1
        else:
            pfn = len(self.f_content)
            self.f_content.append(content)
            self.f_map.append(1)
            self.f_node.append(-1)
        if self.log is not None:
            self.log.frames.add(pfn)
        return pfn

    def _put_frame(self, pfn: int) -> None:
        """Drop one mapping of a frame; free it (and mark its stable node stale) at zero."""
        n = self.f_map[pfn] - 1
        self.f_map[pfn] = n
        if self.log is not None:
            self.log.frames.add(pfn)
        if n == 0:
            nid = self.f_node[pfn]
            if nid >= 0:
                self.nodes[nid].dead = True
                self.dead_nodes += 1
                self.tree_gen += 1
                self.f_node[pfn] = -1
            self.free_pfns.append(pfn)

    # ---------------------------------------------------------------- items
    def _new_item(self, vma: Vma, idx: int) -> None:
        """get_next_rmap_item: a zeroed rmap_item for this address."""
        vma.it_state[idx] = ITEM_NONE
        vma.it_sum[idx] = NO_CHECKSUM
        vma.it_age[idx] = 0
        vma.it_skip[idx] = 0
        vma.it_node[idx] = -1
        vma.it_skipped[idx] = 0
        vma.nitems += 1
        vma.mm.ksm_rmap_items += 1
        self.ksm_rmap_items += 1
        if self.log is not None:
            self.log.event("item_new", (vma.uid << KEY_SHIFT) | idx)

    def _free_item(self, vma: Vma, idx: int) -> None:
        """remove_rmap_item_from_tree + free_rmap_item."""
        self._remove_rmap_item_from_tree(vma, idx)
        vma.it_state[idx] = ITEM_ABSENT
        vma.nitems -= 1
        vma.mm.ksm_rmap_items -= 1
        self.ksm_rmap_items -= 1
        if self.log is not None:
            self.log.event("item_free", (vma.uid << KEY_SHIFT) | idx)

    def _remove_rmap_item_from_tree(self, vma: Vma, idx: int) -> None:
        raise NotImplementedError  # provided by the stable-tree layer

    def _drop_dead_region(self, vma: Vma) -> None:
        mm = vma.mm
        mm.regions.remove(vma)
        del self.vmas_by_uid[vma.uid]
