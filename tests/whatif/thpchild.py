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
import os
import sys

PAGE = 4096
HUGE = 2 << 20
DUPS = 64
UNIQUE = 64
MADV_MERGEABLE = 12
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
PROT_RW = 0x3
MAP_PRIVATE_ANON = 0x02 | 0x20


def dup_page(j: int) -> bytes:
    return (b"thp-dup %04d " % j) * (PAGE // 13) + bytes(PAGE % 13)


def main() -> None:
    role, blocks = sys.argv[1], int(sys.argv[2])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if role == "thp":
        size = blocks * HUGE
        raw = libc.mmap(None, size + HUGE, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
        assert raw not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        addr = (raw + HUGE - 1) // HUGE * HUGE
        assert libc.madvise(addr, size, MADV_HUGEPAGE) == 0, os.strerror(ctypes.get_errno())
        for b in range(blocks):
            base = addr + b * HUGE
            if b == 2:  # two equal pages inside one huge page, nothing shared outside
                same = os.urandom(PAGE)
                ctypes.memmove(base, same, PAGE)
                ctypes.memmove(base + PAGE, same, PAGE)
                for j in range(2, 2 + UNIQUE):
                    ctypes.memmove(base + j * PAGE, os.urandom(PAGE), PAGE)
                continue
            for j in range(DUPS):
                ctypes.memmove(base + j * PAGE, dup_page(j), PAGE)
            for j in range(DUPS, DUPS + UNIQUE):
                ctypes.memmove(base + j * PAGE, os.urandom(PAGE), PAGE)
    else:
        size = DUPS * PAGE
        addr = libc.mmap(None, size, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
        assert libc.madvise(addr, size, MADV_NOHUGEPAGE) == 0
        for j in range(DUPS):
            ctypes.memmove(addr + j * PAGE, dup_page(j), PAGE)
    assert libc.madvise(addr, size, MADV_MERGEABLE) == 0, os.strerror(ctypes.get_errno())
    sys.stdout.write(f"{addr}\n")
    sys.stdout.flush()
    sys.stdin.read()


if __name__ == "__main__":
    main()
