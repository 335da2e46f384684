"""A child process with known memory, for the capture tests (run as a script).

``python memchild.py PAGES [CHANGE [merge]]`` maps PAGES private anonymous pages (madvised
MADV_MERGEABLE with ``merge``) and fills them by
page index ``i``: ``i % 4 == 0`` zero-filled (written), ``1`` one shared random page
(duplicates), ``2`` a random page of its own (unique), ``3`` never touched. It prints the
mapping's address and waits on stdin; with CHANGE, it rewrites the unique pages of the
first CHANGE groups with new random bytes every 50 ms until stdin closes.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import sys

PAGE = 4096


def main() -> None:
    n = int(sys.argv[1])
    change = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    m = mmap.mmap(-1, n * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    if len(sys.argv) > 3 and sys.argv[3] == "merge":
        m.madvise(mmap.MADV_MERGEABLE)
    dup = os.urandom(PAGE)
    for i in range(n):
        kind = i % 4
        if kind == 0:
            m[i * PAGE : (i + 1) * PAGE] = bytes(PAGE)
        elif kind == 1:
            m[i * PAGE : (i + 1) * PAGE] = dup
        elif kind == 2:
            m[i * PAGE : (i + 1) * PAGE] = os.urandom(PAGE)
    sys.stdout.write(f"{addr}\n")
    sys.stdout.flush()
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 0.05)
        if ready:
            return  # stdin closed or written: done
        for g in range(change):
            i = 4 * g + 2
            if i < n:
                m[i * PAGE : (i + 1) * PAGE] = os.urandom(PAGE)


if __name__ == "__main__":
    main()
