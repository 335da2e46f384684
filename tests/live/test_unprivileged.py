"""What a server that is not root sees on the real kernel (needs root to drop privileges).

A child interpreter imports the live view, maps 4 mergeable pages, then becomes ``nobody``
and reads its own page map (the kernel shows its PFNs as 0), the page map of a root process
(smaps not readable) and the process table (root's processes are unreadable). It holds the
host lock while its mergeable mapping exists, so a kernel replay never sees it as another
KSM user; it writes no knob.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/sys/kernel/mm/ksm").is_dir(),
    reason="needs root (to become nobody) and a KSM kernel",
)

CHILD = r"""
import ctypes, json, os, sys
from app.kernel.host import ksm as reader, pagemap
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
page = os.sysconf("SC_PAGE_SIZE")
addr = libc.mmap(None, 4 * page, 3, 0x22, -1, 0)
assert libc.madvise(addr, 4 * page, 12) == 0  # MADV_MERGEABLE
ctypes.memset(addr, 1, 2 * page)
os.setgroups([]); os.setgid(65534); os.setuid(65534)
libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: setuid made /proc/self root's
own = pagemap.read_page_map("/proc", os.getpid(), 0, 4)
other = pagemap.read_page_map("/proc", int(sys.argv[1]), 0, 4)
table = reader.read_procs("/proc")
print(json.dumps({"own": [own.available, own.reason, own.total_pages],
                  "other": [other.available, other.reason],
                  "unreadable": table.unreadable}))
"""


def test_not_root_gets_reasons_not_a_map() -> None:
    from app.kernel.guard import LockTimeout, host_lock, lock_file_path

    root = Path(__file__).resolve().parents[2]
    try:
        with host_lock(lock_file_path(), timeout=300):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(os.getpid())],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
    except LockTimeout:
        pytest.skip("another kernel user held /var/tmp/ksmlab-kernel.lock for 300 s")
    doc = json.loads(out.stdout)
    available, reason, total = doc["own"]
    assert not available and total == 4
    assert "page frame numbers as 0" in reason and "CAP_SYS_ADMIN" in reason
    available, reason = doc["other"]
    assert not available and "permission denied" in reason and "root" in reason
    assert doc["unreadable"] > 0
