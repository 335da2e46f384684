"""A child process for the THP test (run as a script): ``python thpchild.py ROLE BLOCKS``.

``thp``: maps BLOCKS 2 MiB-aligned blocks with MADV_HUGEPAGE (a transparent huge page each,
when the kernel gives one), first touch by a write so that each block faults in as one
THP; in each block pages 0-63 get the shared contents ``dup`` (page ``j``: the same bytes
in the ``dup`` child), pages 64-127 random bytes of their own, the other 384 stay
zero-filled; a third block holds instead two equal pages (0 and 1), 64 random pages and 446
zero-filled ones. ``dup``: maps 64 pages with MADV_NOHUGEPAGE holding the same 64 contents.
Both madvise MADV_MERGEABLE, print the mapping's address and wait on stdin.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

PAGE = 4096
HUGE = 2 << 20
DUPS = 64
UNIQUE = 64


def dup_page(j: int) -> bytes:
    return (b"thp-dup %04d " % j) * (PAGE // 13) + bytes(PAGE % 13)


def main() -> None:
    role, blocks = sys.argv[1], int(sys.argv[2])
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    if role == "thp":
        size = blocks * HUGE
        m = mmap.mmap(-1, size + HUGE, flags=flags)
        start = ctypes.addressof(ctypes.c_char.from_buffer(m))
        off = -start % HUGE  # the first 2 MiB-aligned address in the mapping
        m.madvise(mmap.MADV_HUGEPAGE, off, size)
        for b in range(blocks):
            base = off + b * HUGE
            if b == 2:  # two equal pages inside one huge page, nothing shared outside
                same = os.urandom(PAGE)
                m[base : base + 2 * PAGE] = same * 2
                for j in range(2, 2 + UNIQUE):
                    m[base + j * PAGE : base + (j + 1) * PAGE] = os.urandom(PAGE)
                continue
            for j in range(DUPS):
                m[base + j * PAGE : base + (j + 1) * PAGE] = dup_page(j)
            for j in range(DUPS, DUPS + UNIQUE):
                m[base + j * PAGE : base + (j + 1) * PAGE] = os.urandom(PAGE)
    else:
        size, off = DUPS * PAGE, 0
        m = mmap.mmap(-1, size, flags=flags)
        start = ctypes.addressof(ctypes.c_char.from_buffer(m))
        m.madvise(mmap.MADV_NOHUGEPAGE)
        for j in range(DUPS):
            m[j * PAGE : (j + 1) * PAGE] = dup_page(j)
    m.madvise(mmap.MADV_MERGEABLE, off, size)
    sys.stdout.write(f"{start + off}\n")
    sys.stdout.flush()
    sys.stdin.read()


if __name__ == "__main__":
    main()
