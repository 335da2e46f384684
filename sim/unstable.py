"""The unstable tree's index: content id -> page key of the item holding it (compact).

The scanner keeps the unstable tree as a map from a content to the key of the rmap_item that
was inserted for it (see :mod:`sim.scanner`). A dictionary of Python integers costs about
100 bytes an entry; a 16-million-page session has 8 million entries at the end of a pass.
:class:`UnstableIndex` keeps the same map in chunks of :data:`CHUNK` 64-bit slots, one
``array('q')`` per chunk of content ids that holds an entry, freed when its last entry goes:
content ids are drawn in sequence (a whole mapping written ``unique`` draws a run), so live
entries sit densely in chunks and cost about 8 bytes each.

It behaves as the ``dict[int, int]`` it replaces for what the simulator asks of it:
``get``, ``[content] = key``, ``del``, ``in``, ``len``, ``items`` (in content order) and
``clear`` (the pass start's reset).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator

from .mm import seq_array

#: log2 of the content ids per chunk
CHUNK_BITS = 8
CHUNK = 1 << CHUNK_BITS
CHUNK_MASK = CHUNK - 1
#: an empty slot (page keys are never negative)
EMPTY = -1
_BLANK = array("q", [EMPTY]) * CHUNK
_LO, _HI = (0, 1) if sys.byteorder == "little" else (1, 0)


def key_run(key: int, n: int) -> array[int]:
    """``array("q", range(key, key + n))`` for page keys (the low 32 bits do not wrap)."""
    out = array("q", bytes(8 * n))
    words = memoryview(out).cast("B").cast("i")
    words[_LO::2] = memoryview(seq_array(key & 0xFFFFFFFF, n))
    words[_HI::2] = memoryview(array("i", [key >> 32]) * n)
    return out


class UnstableIndex:
    """content id -> page key, in chunks of :data:`CHUNK` slots (see the module docstring)."""

    __slots__ = ("chunks", "counts", "size")

    def __init__(self) -> None:
        #: chunk number (content >> CHUNK_BITS) -> its slots
        self.chunks: dict[int, array[int]] = {}
        #: chunk number -> entries in it
        self.counts: dict[int, int] = {}
        self.size = 0

    def get(self, content: int) -> int | None:
        chunk = self.chunks.get(content >> CHUNK_BITS)
        if chunk is None:
            return None
        key = chunk[content & CHUNK_MASK]
        return None if key < 0 else key

    def __contains__(self, content: int) -> bool:
        return self.get(content) is not None

    def __getitem__(self, content: int) -> int:
        key = self.get(content)
        if key is None:
            raise KeyError(content)
        return key

    def __setitem__(self, content: int, key: int) -> None:
        n = content >> CHUNK_BITS
        chunk = self.chunks.get(n)
        if chunk is None:
            chunk = self.chunks[n] = array("q", _BLANK)
            self.counts[n] = 0
        slot = content & CHUNK_MASK
        if chunk[slot] < 0:
            self.counts[n] += 1
            self.size += 1
        chunk[slot] = key

    def __delitem__(self, content: int) -> None:
        n = content >> CHUNK_BITS
        chunk = self.chunks.get(n)
        slot = content & CHUNK_MASK
        if chunk is None or chunk[slot] < 0:
            raise KeyError(content)
        chunk[slot] = EMPTY
        self.size -= 1
        left = self.counts[n] - 1
        if left:
            self.counts[n] = left
        else:
            del self.chunks[n]
            del self.counts[n]

    def set_run(self, content: int, key: int, n: int) -> bool:
        """Contents ``content`` .. ``content + n - 1`` get keys ``key`` .. ``key + n - 1``,
        if none of them has an entry (else False, nothing changed)."""
        spans = []
        c, end = content, content + n
        while c < end:
            number, slot = c >> CHUNK_BITS, c & CHUNK_MASK
            k = min(end - c, CHUNK - slot)
            chunk = self.chunks.get(number)
            if chunk is not None and chunk[slot : slot + k] != _BLANK[:k]:
                return False
            spans.append((number, slot, k))
            c += k
        keys = key_run(key, n)
        done = 0
        for number, slot, k in spans:
            chunk = self.chunks.get(number)
            if chunk is None:
                chunk = self.chunks[number] = array("q", _BLANK)
                self.counts[number] = 0
            chunk[slot : slot + k] = keys[done : done + k]
            self.counts[number] += k
            done += k
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
            for slot, key in enumerate(self.chunks[n]):
                if key >= 0:
                    yield base + slot, key

    def clear(self) -> None:
        self.chunks.clear()
        self.counts.clear()
        self.size = 0

    def __repr__(self) -> str:
        return f"<UnstableIndex {self.size} entries in {len(self.chunks)} chunks>"
