"""A child process with a private file mapping, for the capture tests (run as a script).

``python filechild.py DIR`` writes a file of :data:`PAGES` pages (page ``i`` filled with
its own bytes) in DIR, maps it ``MAP_PRIVATE`` read-write and ``MADV_MERGEABLE``, reads
pages 0-15 (their PTEs map the page-cache pages) and writes pages 0-2 (copy on write:
pages 0 and 1 with one shared random page, page 2 zero-filled). Pages 64 and above are
never touched. It prints the mapping's address and waits until stdin closes.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

PAGE = 4096
PAGES = 256
READ = range(16)
DUP = (0, 1)
ZERO = 2


def main() -> None:
    path = os.path.join(sys.argv[1], "filechild.data")
    with open(path, "wb") as f:
        for i in range(PAGES):
            f.write(i.to_bytes(8, "little") * (PAGE // 8))
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, PAGES * PAGE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    os.close(fd)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    m.madvise(mmap.MADV_MERGEABLE)
    total = sum(m[i * PAGE] for i in READ)
    dup = os.urandom(PAGE)
    for i in DUP:
        m[i * PAGE : (i + 1) * PAGE] = dup
    m[ZERO * PAGE : (ZERO + 1) * PAGE] = bytes(PAGE)
    sys.stdout.write(f"{addr} {total}\n")
    sys.stdout.flush()
    sys.stdin.read()


if __name__ == "__main__":
    main()
