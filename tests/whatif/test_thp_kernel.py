"""KSM splits transparent huge pages: the real ksmd against the simulation of a capture
(root, KSMLAB_KERNEL_TESTS=1; THP ``madvise`` or ``always`` on the host).

A child (``thpchild.py thp``) maps three 2 MiB-aligned blocks with MADV_HUGEPAGE, each one
THP: in two, 64 pages of contents another child (``thpchild.py dup``, no THP) holds too, 64
random pages, 384 zero-filled pages; in the third, two equal pages (the scanned page and the
unstable tree's page in one huge page: split without merging, merged a pass later), 64
random pages and 446 zero-filled ones. The test captures both with ksmd stopped, checks in smaps
that the kernel really gave THPs (``AnonHugePages``; skips with the reason otherwise), runs
the real ksmd (host lock held, every knob saved and restored, ``run=0`` at the end) until
six more full scans are done, then compares per process ``ksm_zero_pages`` and
``ksm_merging_pages`` and the zero-page PTEs that appeared (pagemap + kpageflags
``ZERO_PAGE``, :func:`app.whatif.check.zero_page_ptes`) with the simulation of the
capture (its THPs applied, :func:`sim.fromcapture.apply_thp`) over as many passes.
With ``use_zero_pages=1`` and with 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.kernel.capture import capture_processes
from app.kernel.guard import KnobGuard, host_lock, lock_file_path, state_file_path
from app.kernel.host.procfs import ProcFs
from app.kernel.sysfs import KsmSysfs
from app.whatif.check import zero_page_ptes
from sim import Kernel
from sim.capture import THP
from sim.fromcapture import apply_thp, capture_scenario, proc_names
from sim.stepper import Next, Stepper

pytestmark = pytest.mark.skipif(
    os.environ.get("KSMLAB_KERNEL_TESTS") != "1", reason="needs KSMLAB_KERNEL_TESTS=1 (root)"
)
CHILD = Path(__file__).with_name("thpchild.py")
BLOCKS = 3
PASSES = 6


class ThpChild:
    def __init__(self, role: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), role, str(BLOCKS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.addr = int(self.proc.stdout.readline())
        self.pid = self.proc.pid

    def anon_huge_kb(self) -> int:
        """AnonHugePages of the child's mapping at ``addr`` (smaps)."""
        lines = Path(f"/proc/{self.pid}/smaps").read_text().splitlines()
        inside = False
        for line in lines:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= self.addr < hi
            elif inside and head == "AnonHugePages:":
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _ksmd_passes(
    a: ThpChild, b: ThpChild, sysfs: KsmSysfs, use_zero_pages: int
) -> tuple[dict[int, dict[str, int]], int, int]:
    """The real ksmd over PASSES more full scans (the caller holds the host lock and has
    saved the knobs): ksm_stat per pid, the zero-page PTEs of the THP child that
    appeared, and the full scans done."""
    procfs = ProcFs()
    for name, value in (
        ("use_zero_pages", use_zero_pages),
        ("pages_to_scan", 5000),
        ("sleep_millisecs", 10),
        ("smart_scan", 0),
    ):
        if sysfs.exists(name):
            sysfs.write(name, value)
    zero0 = zero_page_ptes([a.pid])
    scans0 = int(sysfs.read_int("full_scans") or 0)
    sysfs.write("run", 1)
    deadline = time.monotonic() + 240
    while int(sysfs.read_int("full_scans") or 0) < scans0 + PASSES:
        assert time.monotonic() < deadline, "ksmd did not complete its passes"
        time.sleep(0.05)
    sysfs.write("run", 0)  # stopped: merges and zero pages stay as they are
    scans = int(sysfs.read_int("full_scans") or 0) - scans0
    stats = {}
    for pid in (a.pid, b.pid):
        st = procfs.ksm_stat(pid) or {}
        stats[pid] = {k: int(v) for k, v in st.items()}
    return stats, zero_page_ptes([a.pid]) - zero0, scans


@pytest.mark.parametrize("use_zero_pages", [1, 0])
def test_thp_split_zero_pages_against_the_kernel(use_zero_pages: int) -> None:
    assert os.geteuid() == 0, "KSMLAB_KERNEL_TESTS=1 needs root"
    sysfs = KsmSysfs()
    # held from the children's start: no other ksmd run may touch their pages first
    with host_lock(lock_file_path(), timeout=900):
        guard = KnobGuard(sysfs, state_file_path())
        guard.save()
        a = b = None
        try:
            sysfs.write("run", 0)
            a = ThpChild("thp")
            b = ThpChild("dup")
            huge_kb = a.anon_huge_kb()
            if huge_kb < BLOCKS * 2048:
                pytest.skip(
                    f"the kernel gave {huge_kb} kB of AnonHugePages for {BLOCKS} 2 MiB "
                    "blocks (THP disabled or no free huge page): nothing to test"
                )
            cap = capture_processes([a.pid, b.pid], mergeable_only=True)
            stats, zero_kernel, scans = _ksmd_passes(a, b, sysfs, use_zero_pages)
            huge_after = a.anon_huge_kb()
        finally:
            problems = guard.restore()
            if sysfs.read("run") != 0:
                sysfs.write("run", 0)
            for c in (b, a):
                if c is not None:
                    c.stop()
        assert problems == {}
    assert sum(1 for f in cap.flags if f & THP) == BLOCKS * 512
    assert huge_after < huge_kb  # ksmd split them

    sc = capture_scenario(cap, "6.18", {"use_zero_pages": use_zero_pages, "smart_scan": 0})
    k = Kernel("6.18", sc.sysfs, record=True)
    st = Stepper(k, sc.steps)
    while st.in_scenario:
        st.feed(Next("batch"))
    assert apply_thp(k, cap) == BLOCKS * 512
    zero0 = k.zero_page_ptes()
    for _ in range(scans):
        k.scan_pass()
    pa, pb = proc_names(cap)
    sim = {a.pid: k.ksm_stat(pa), b.pid: k.ksm_stat(pb)}
    zero_sim = k.zero_page_ptes() - zero0
    report = {
        "use_zero_pages": use_zero_pages,
        "passes": scans,
        "anon_huge_kb": [huge_kb, huge_after],
        "kernel": {"stats": stats, "zero_page_ptes": zero_kernel},
        "sim": {"stats": sim, "zero_page_ptes": zero_sim, "thp_pages": k.thp_pages()},
    }
    sys.stderr.write(f"THP check: {report}\n")
    for pid in (a.pid, b.pid):
        for name in ("ksm_merging_pages", "ksm_zero_pages", "ksm_rmap_items"):
            assert sim[pid][name] == stats[pid].get(name), (name, report)
    assert zero_sim == zero_kernel, report
    # the zero-filled pages went to the zero page outside KSM's counters
    assert zero_kernel - stats[a.pid].get("ksm_zero_pages", 0) >= 2 * 384 + 446
    # without its THPs the simulation counts them: ksm_zero_pages, or one KSM page
    flat = Kernel("6.18", sc.sysfs)
    for step in sc.steps:
        flat.apply(step)
    for _ in range(scans):
        flat.scan_pass()
    counted = flat.ksm_stat(pa)
    assert (counted["ksm_zero_pages"], counted["ksm_merging_pages"]) != (
        sim[a.pid]["ksm_zero_pages"],
        sim[a.pid]["ksm_merging_pages"],
    )


def test_a_split_zero_page_in_the_unstable_tree_stops_the_pass_on_the_kernel() -> None:
    """The real ksmd, pass by pass, on the simulator's case
    (tests/sim/test_thp.py::test_a_split_zero_page_in_the_unstable_tree_makes_every_walk_give_up):
    a huge page of zero-filled pages scanned first, then 500 identical pairs, in this test
    process; one batch per pass. With the huge page, pass 2 merges nothing (its first page's
    stale node is the unstable tree's root: every walk gives up) and pass 3 merges the pairs;
    the simulator says the same, pass for pass."""
    import ctypes
    import mmap
    import struct

    from app.kernel.calibrate import OnePass, _fresh, anon_huge_kb, ksmd_pid
    from tests.sim.test_thp import _stale_zero_node_kernel, _three_passes

    page, huge, pairs = 4096, 2 << 20, 500
    sysfs = KsmSysfs("/sys/kernel/mm/ksm")
    with host_lock(lock_file_path(), timeout=600):
        assert sysfs.read("run") == 0, "ksmd is running: someone uses KSM"
        guard = KnobGuard(sysfs, state_file_path())
        guard.save()
        try:
            for with_thp in (True, False):
                _fresh(sysfs, pages_to_scan=100_000, smart_scan=0, use_zero_pages=1)
                flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                m2 = mmap.mmap(-1, 2 * pairs * page, flags=flags)
                m2.madvise(mmap.MADV_NOHUGEPAGE)
                stamp = time.monotonic_ns()
                for i in range(2 * pairs):
                    m2[i * page : (i + 1) * page] = struct.pack("<QQ", stamp, i % pairs) * 256
                m1 = mmap.mmap(-1, huge, flags=flags)  # mapped later: a lower address
                m1.madvise(mmap.MADV_HUGEPAGE if with_thp else mmap.MADV_NOHUGEPAGE)
                for i in range(0, huge, page):
                    m1[i] = 0  # first touch by a write
                a1 = ctypes.addressof(ctypes.c_char.from_buffer(m1))
                a2 = ctypes.addressof(ctypes.c_char.from_buffer(m2))
                try:
                    assert a1 < a2, "the huge page must be scanned first"
                    if with_thp and anon_huge_kb() < 2048:
                        pytest.skip("the kernel gave no transparent huge page")
                    m1.madvise(mmap.MADV_MERGEABLE)
                    m2.madvise(mmap.MADV_MERGEABLE)
                    one = OnePass(sysfs, ksmd_pid())
                    got = []
                    for _ in range(3):
                        one()
                        got.append(
                            tuple(
                                int(sysfs.read_int(n) or 0)
                                for n in (
                                    "pages_shared",
                                    "pages_sharing",
                                    "ksm_zero_pages",
                                    "pages_unshared",
                                )
                            )
                        )
                finally:
                    del a1, a2
                    m1.close()
                    m2.close()
                sim = _three_passes(_stale_zero_node_kernel("6.18", with_thp))
                assert got == sim, (with_thp, got, sim)
                if with_thp:
                    assert got[1] == (0, 0, 0, 1) and got[2][:2] == (pairs, pairs)
        finally:
            problems = guard.restore()
            if sysfs.read("run") != 0:
                sysfs.write("run", 0)
            assert not problems, problems


def test_the_captured_memcmp_order_decides_which_walks_give_up_on_the_kernel() -> None:
    """The kernel's side of tests/whatif/test_memcmp_order.py: in this test process, a page
    U (first byte 0x80), then a huge page of zero-filled pages, then 300 identical pairs
    whose first bytes are drawn at random, one batch per pass. In pass 2 U is the unstable
    tree's root and the split's stale node its left child: the pairs that sort before U give
    up, the others merge; pass 3 merges the rest. The simulation of a memcmp-ordered
    capture of this memory says how many, pass for pass."""
    import ctypes
    import mmap
    import random
    import struct

    from app.kernel.calibrate import OnePass, _fresh, anon_huge_kb, ksmd_pid
    from tests.whatif.test_memcmp_order import three_passes

    page, huge, pairs = 4096, 2 << 20, 300
    rng = random.Random(17)
    firsts = [rng.getrandbits(64) for _ in range(pairs)]
    stamp = time.monotonic_ns()
    sysfs = KsmSysfs("/sys/kernel/mm/ksm")
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    with host_lock(lock_file_path(), timeout=600):
        assert sysfs.read("run") == 0, "ksmd is running: someone uses KSM"
        guard = KnobGuard(sysfs, state_file_path())
        guard.save()
        m2 = mmap.mmap(-1, 2 * pairs * page, flags=flags)
        big = mmap.mmap(-1, 2 * huge, flags=flags)  # mapped later: a lower address
        try:
            _fresh(sysfs, pages_to_scan=100_000, smart_scan=0, use_zero_pages=1)
            m2.madvise(mmap.MADV_NOHUGEPAGE)
            for i in range(2 * pairs):
                m2[i * page : (i + 1) * page] = struct.pack(
                    ">QQ", firsts[i % pairs], stamp
                ) + bytes(page - 16)
            view = ctypes.c_char.from_buffer(big)
            base = ctypes.addressof(view)
            view2 = ctypes.c_char.from_buffer(m2)
            a2 = ctypes.addressof(view2)
            del view, view2
            assert base < a2, "the huge page must be scanned before the pairs"
            off = -(base + page) % huge + page  # U's page, then a 2 MiB-aligned block
            big.madvise(mmap.MADV_NOHUGEPAGE)
            big.madvise(mmap.MADV_HUGEPAGE, off, huge)
            big[off - page : off] = b"\x80" + struct.pack(">Q", stamp) + bytes(page - 9)
            for i in range(off, off + huge, page):
                big[i] = 0  # first touch by a write
            if anon_huge_kb() < 2048:
                pytest.skip("the kernel gave no transparent huge page")
            big.madvise(mmap.MADV_MERGEABLE)
            m2.madvise(mmap.MADV_MERGEABLE)
            cap = capture_processes([os.getpid()], mergeable_only=True, memcmp_order=True)
            one = OnePass(sysfs, ksmd_pid())
            got = []
            for _ in range(3):
                one()
                got.append(int(sysfs.read_int("pages_sharing") or 0))
        finally:
            big.close()
            m2.close()
            problems = guard.restore()
            if sysfs.read("run") != 0:
                sysfs.write("run", 0)
            assert not problems, problems
    assert sum(1 for f in cap.flags if f & THP) == 512
    sys.stderr.write(f"memcmp order check: kernel {got}, simulated {three_passes(cap)}\n")
    assert 0 < got[1] < pairs and got[2] == pairs  # the order did decide pass 2
    assert three_passes(cap) == got
