"""A process with mergeable memory, for the live view's kernel tests and fixture recording.

``python ksm_worker.py`` maps ``PAGES`` private anonymous pages at ``ADDRESS`` (a fixed,
low address keeps the pagemap offsets small), marks them MADV_NOHUGEPAGE and
MADV_MERGEABLE, fills them as laid out in ``LAYOUT``, prints ``ready ADDRESS PAGES`` and
waits until its stdin closes. Standard library only (ctypes).
"""

from __future__ import annotations

import ctypes
import os
import sys

ADDRESS = 0x200000000
PAGE = os.sysconf("SC_PAGE_SIZE")
#: (first page, count, content): "A"/"B" duplicates, "0" written zeros, "U" unique, None untouched
LAYOUT: list[tuple[int, int, str | None]] = [
    (0, 32, "A"),
    (32, 32, "B"),
    (64, 32, "0"),
    (96, 16, "U"),
    (112, 16, None),
]
PAGES = 128
MADV_MERGEABLE, MADV_NOHUGEPAGE = 12, 15


def main() -> int:
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
    length = PAGES * PAGE
    # PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE
    addr = libc.mmap(ADDRESS, length, 3, 0x02 | 0x20 | 0x100000, -1, 0)
    if addr != ADDRESS:
        print(f"mmap failed: errno {ctypes.get_errno()}", file=sys.stderr)
        return 1
    for advice in (MADV_NOHUGEPAGE, MADV_MERGEABLE):
        if libc.madvise(addr, length, advice) != 0:
            print(f"madvise {advice} failed: errno {ctypes.get_errno()}", file=sys.stderr)
            return 1
    for first, count, content in LAYOUT:
        for page in range(first, first + count):
            if content is None:
                continue
            if content == "U":
                data = f"unique page {page} of {os.getpid()}".encode().ljust(PAGE, b".")
            elif content == "0":
                data = bytes(PAGE)
            else:
                data = content.encode() * PAGE
            ctypes.memmove(addr + page * PAGE, data, PAGE)
    print(f"ready {addr:#x} {PAGES}", flush=True)
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
