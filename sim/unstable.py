"""The unstable tree's index: content id -> page key of the item holding it (compact).

The scanner keeps the unstable tree as a map from a content to the key of the rmap_item that
was inserted for it (see :mod:`sim.scanner`). A dictionary of Python integers costs about
100 bytes an entry; a 16-million-page session has 8 million entries at the end of a pass.
:class:`UnstableIndex` keeps the same map in chunks of :data:`CHUNK` content ids, one per
chunk that holds an entry, freed when its last entry goes. A chunk is either

- a **span** ``(delta, lo, hi)``: slots ``lo`` .. ``hi - 1`` hold ``content + delta`` and the
  others are empty. A run of pages of consecutive contents (``set_run``: a mapping written
  ``unique`` draws its content ids in sequence, its pages have consecutive keys) fills its
  chunks with such spans, and the next run of the same mapping extends them: a few dozen
  bytes a chunk, whatever its number of entries;
- or an ``array('q')`` of :data:`CHUNK` 64-bit slots (about 8 bytes an entry), which a span
  becomes as soon as an entry is set or removed that the span cannot express.

It behaves as the ``dict[int, int]`` it replaces for what the simulator asks of it:
``get``, ``[content] = key``, ``del``, ``in``, ``len``, ``items`` (in content order) and
``clear`` (the pass start's reset).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias, cast

from .mm import SEQ_SHORT, seq_array, short_seq
from .rbtree import RbNode, RbRoot, rb_erase, rb_insert_color, rb_link_node

#: log2 of the content ids per chunk
CHUNK_BITS = 8
CHUNK = 1 << CHUNK_BITS
CHUNK_MASK = CHUNK - 1
#: an empty slot (page keys are never negative)
EMPTY = -1
_BLANK = array("q", [EMPTY]) * CHUNK
_LO, _HI = (0, 1) if sys.byteorder == "little" else (1, 0)

#: a chunk: its slots, or a span (delta, lo, hi) of slots holding content + delta
Chunk: TypeAlias = "array[int] | tuple[int, int, int]"


def key_run(key: int, n: int) -> array[int]:
    """``array("q", range(key, key + n))`` for page keys (the low 32 bits do not wrap)."""
    if n <= SEQ_SHORT:
        return short_seq("q", key, n)
    out = array("q", bytes(8 * n))
    words = memoryview(out).cast("B").cast("i")
    words[_LO::2] = memoryview(seq_array(key & 0xFFFFFFFF, n))
    words[_HI::2] = memoryview(array("i", [key >> 32]) * n)
    return out


class UnstableIndex:
    """content id -> page key, in chunks of :data:`CHUNK` slots (see the module docstring)."""

    __slots__ = ("chunks", "counts", "size")

    def __init__(self) -> None:
        #: chunk number (content >> CHUNK_BITS) -> its slots or its span
        self.chunks: dict[int, Chunk] = {}
        #: chunk number -> entries in it
        self.counts: dict[int, int] = {}
        self.size = 0

    def get(self, content: int) -> int | None:
        chunk = self.chunks.get(content >> CHUNK_BITS)
        if chunk is None:
            return None
        slot = content & CHUNK_MASK
        if type(chunk) is tuple:
            delta, lo, hi = chunk
            return content + delta if lo <= slot < hi else None
        key = chunk[slot]
        return None if key < 0 else key

    def __contains__(self, content: int) -> bool:
        return self.get(content) is not None

    def __getitem__(self, content: int) -> int:
        key = self.get(content)
        if key is None:
            raise KeyError(content)
        return key

    def _slots(self, number: int) -> array[int]:
        """Chunk ``number``'s slots (a new blank chunk if it has none; a span written out)."""
        chunk = self.chunks.get(number)
        if type(chunk) is array:
            return chunk
        slots = array("q", _BLANK)
        if chunk is None:
            self.counts[number] = 0
        else:
            delta, lo, hi = cast("tuple[int, int, int]", chunk)
            slots[lo:hi] = key_run((number << CHUNK_BITS) + lo + delta, hi - lo)
        self.chunks[number] = slots
        return slots

    def __setitem__(self, content: int, key: int) -> None:
        n = content >> CHUNK_BITS
        if n not in self.chunks:  # a chunk's first entry: a span of one
            slot = content & CHUNK_MASK
            self.chunks[n] = (key - content, slot, slot + 1)
            self.counts[n] = 1
            self.size += 1
            return
        chunk = self._slots(n)
        slot = content & CHUNK_MASK
        if chunk[slot] < 0:
            self.counts[n] += 1
            self.size += 1
        chunk[slot] = key

    def __delitem__(self, content: int) -> None:
        n = content >> CHUNK_BITS
        chunk = self.chunks.get(n)
        slot = content & CHUNK_MASK
        if chunk is None or self.get(content) is None:
            raise KeyError(content)
        self.size -= 1
        left = self.counts[n] - 1
        if not left:
            del self.chunks[n]
            del self.counts[n]
            return
        self.counts[n] = left
        if type(chunk) is tuple:
            delta, lo, hi = chunk
            if slot == lo or slot == hi - 1:  # the span shrinks from an end
                self.chunks[n] = (delta, lo + (slot == lo), hi - (slot == hi - 1))
                return
        self._slots(n)[slot] = EMPTY

    def set_run(self, content: int, key: int, n: int) -> bool:
        """Contents ``content`` .. ``content + n - 1`` get keys ``key`` .. ``key + n - 1``,
        if none of them has an entry (else False, nothing changed)."""
        chunks = self.chunks
        spans = []
        c, end = content, content + n
        while c < end:
            number, slot = c >> CHUNK_BITS, c & CHUNK_MASK
            k = min(end - c, CHUNK - slot)
            chunk = chunks.get(number)
            if chunk is not None:
                if type(chunk) is tuple:
                    _, lo, hi = chunk
                    if slot < hi and lo < slot + k:
                        return False
                elif chunk[slot : slot + k] != _BLANK[:k]:
                    return False
            spans.append((number, slot, k, chunk))
            c += k
        delta = key - content
        for number, slot, k, chunk in spans:
            if chunk is None:
                chunks[number] = (delta, slot, slot + k)
                self.counts[number] = k
                continue
            if type(chunk) is tuple:
                d, lo, hi = chunk
                if d == delta and (hi == slot or slot + k == lo):  # the span grows
                    chunks[number] = (delta, min(lo, slot), max(hi, slot + k))
                    self.counts[number] += k
                    continue
            base = (number << CHUNK_BITS) + slot
            self._slots(number)[slot : slot + k] = key_run(base + delta, k)
            self.counts[number] += k
        self.size += n
        return True

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def items(self) -> Iterator[tuple[int, int]]:
        """(content, key) of every entry, in content order."""
        for n in sorted(self.chunks):
            base = n << CHUNK_BITS
            chunk = self.chunks[n]
            if type(chunk) is tuple:
                delta, lo, hi = chunk
                for content in range(base + lo, base + hi):
                    yield content, content + delta
                continue
            for slot, key in enumerate(chunk):
                if key >= 0:
                    yield base + slot, key

    def clear(self) -> None:
        self.chunks.clear()
        self.counts.clear()
        self.size = 0

    def __repr__(self) -> str:
        spans = sum(1 for c in self.chunks.values() if type(c) is tuple)
        return f"<UnstableIndex {self.size} entries in {len(self.chunks)} chunks ({spans} spans)>"


class _Node(RbNode):
    __slots__ = ("content", "order", "key")

    def __init__(self, content: int, order: bytes, key: int) -> None:
        super().__init__()
        self.content = content
        self.order = order
        self.key = key


class WalkedUnstableIndex(UnstableIndex):
    """The unstable index plus the kernel's red-black tree of it, for walks that can meet a
    node whose page is gone.

    The dictionary gives the kernel's result as long as every node a walk meets has its
    page (the module :mod:`sim.scanner` says why). A THP split breaks that within a pass:
    it maps the zero-filled pages of the huge page to the zero page, among them the page
    ksmd just inserted in the unstable tree (:mod:`sim.thp`), and
    ``unstable_tree_search_insert`` gives up, inserting nothing, when
    ``get_mergeable_page`` finds no page for a node on its path. A kernel with huge pages
    keeps this tree beside the map (same inserts and erasures, in the same order, ordered
    as the stable tree is: :meth:`sim.state.KsmState.content_order`) and walks it;
    ``walk`` says whether the walk for a content reaches its node or its place, or gives
    up. The order of contents whose bytes the format leaves open (unique pages, the classes
    of a salted capture) is the simulator's stand-in, so which walks meet such a node is as
    plausible as that order, not known; a capture in memcmp order gives the real one
    (:func:`sim.fromcapture.apply_order`); a zero-filled page's node is always the leftmost.
    """

    __slots__ = ("kernel", "root", "nodes")

    def __init__(self, kernel: Any) -> None:
        super().__init__()
        self.kernel = kernel
        self.root = RbRoot()
        self.nodes: dict[int, _Node] = {}

    def _place(self, content: int, order: bytes) -> tuple[_Node | None, bool]:
        node = cast("_Node | None", self.root.node)
        parent: _Node | None = None
        left = False
        less = self.kernel.content_less
        while node is not None:
            parent = node
            left = order < node.order if order != node.order else less(content, node.content)
            node = cast("_Node | None", node.rb_left if left else node.rb_right)
        return parent, left

    def __setitem__(self, content: int, key: int) -> None:
        old = self.nodes.get(content)
        if old is not None:
            old.key = key
        else:
            order = self.kernel.content_order(content)
            node = _Node(content, order, key)
            parent, left = self._place(content, order)
            rb_link_node(node, parent, left, self.root)
            rb_insert_color(node, self.root)
            self.nodes[content] = node
        super().__setitem__(content, key)

    def __delitem__(self, content: int) -> None:
        super().__delitem__(content)
        node = self.nodes.pop(content, None)
        if node is not None:
            rb_erase(node, self.root)

    def set_run(self, content: int, key: int, n: int) -> bool:
        raise NotImplementedError("runs are off in a kernel with transparent huge pages")

    def clear(self) -> None:
        super().clear()
        self.root = RbRoot()
        self.nodes.clear()

    def walk(self, content: int, mergeable: Callable[[int], bool]) -> bool:
        """The walk for ``content`` from the root: False if it gives up at a node whose
        page ``mergeable(key)`` says is gone, before reaching ``content``'s node or place."""
        order = self.kernel.content_order(content)
        less = self.kernel.content_less
        node = cast("_Node | None", self.root.node)
        while node is not None:
            if not mergeable(node.key):
                return False
            if node.content == content:
                return True
            left = order < node.order if order != node.order else less(content, node.content)
            node = cast("_Node | None", node.rb_left if left else node.rb_right)
        return True
