"""The KSM state of a capture, read from a real kernel (root, KSMLAB_KERNEL_TESTS=1).

A child madvises its pages MADV_MERGEABLE; the real ksmd merges them (host lock held,
every knob saved and restored, ksmd stopped at the end); the capture must then show its
duplicate and zero-filled pages as KSM pages and its unique ones as plain, and the
prediction must say that it starts with nothing merged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from app.kernel.capture import capture_processes
from app.kernel.guard import KnobGuard, host_lock, lock_file_path, state_file_path
from app.kernel.host.procfs import ProcFs
from app.kernel.sysfs import KsmSysfs
from app.whatif.predict import predict
from sim.capture import KSM_PAGE, KSM_PLAIN, PRESENT

from .conftest import Child

pytestmark = pytest.mark.skipif(
    os.environ.get("KSMLAB_KERNEL_TESTS") != "1", reason="needs KSMLAB_KERNEL_TESTS=1 (root)"
)
PAGES = 400


def test_capture_shows_the_kernels_ksm_pages(child: Callable[..., Child]) -> None:
    assert os.geteuid() == 0, "KSMLAB_KERNEL_TESTS=1 needs root"
    sysfs = KsmSysfs()
    with host_lock(lock_file_path(), timeout=900):
        guard = KnobGuard(sysfs, state_file_path())
        guard.save()
        try:
            c = child(PAGES, 0, True)
            sysfs.write("run", 0)
            for name, value in (
                ("use_zero_pages", 0),
                ("pages_to_scan", 5000),
                ("sleep_millisecs", 10),
            ):
                sysfs.write(name, value)
            sysfs.write("run", 1)
            want = PAGES // 4 * 2  # the zero-filled and the duplicate pages
            deadline = time.monotonic() + 120
            while True:
                stat = ProcFs().ksm_stat(c.pid) or {}
                if int(stat.get("ksm_merging_pages", 0)) >= want:
                    break
                assert time.monotonic() < deadline, f"ksmd did not merge: {stat}"
                time.sleep(0.2)
            sysfs.write("run", 0)  # stopped: the merged pages stay merged
            cap = capture_processes([c.pid])
        finally:
            problems = guard.restore()
        assert problems == {}
        assert sysfs.read("run") == 0 or guard.saved is not None
    assert cap.ksm_rule.startswith(("KPF_KSM", "KPF_ANON"))
    m = next(m for _, m in cap.mappings() if m.start <= c.addr < m.start + m.pages * 4096)
    assert m.mergeable
    first = m.first + (c.addr - m.start) // 4096
    for i in range(PAGES):
        f = cap.flags[first + i]
        kind = i % 4
        if kind == 3:
            assert not f & PRESENT
        elif kind in (0, 1):
            assert cap.ksm_state(first + i) == KSM_PAGE, (i, f)
        else:
            assert cap.ksm_state(first + i) == KSM_PLAIN, (i, f)
    assert {cap.cls[first + i] for i in range(0, PAGES, 4)} == {0}
    assert len({cap.cls[first + i] for i in range(1, PAGES, 4)}) == 1
    pred = predict(cap, "6.18", {"pages_to_scan": 1000}, duration_s=5)
    assert any("starts with KSM off and nothing merged" in n for n in pred.notes)
    assert pred.pages_sharing >= want - 2  # merged again in the simulator
