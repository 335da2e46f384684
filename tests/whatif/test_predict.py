"""Capture -> simulation -> prediction, on synthetic captures and a real child's."""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable

import pytest

from app.kernel.capture import capture_processes
from app.whatif.predict import predict
from sim import KnobError
from sim.capture import PRESENT, Capture, CapturedMapping, CapturedProcess
from sim.fromcapture import capture_scenario

from .conftest import Child


def quarter_capture(pages: int = 1000, changing: int = 0, mergeable: bool = False) -> Capture:
    """One process, one mapping: zero, duplicate, unique and absent pages, a quarter each;
    the first ``changing`` unique pages changed 4 times over 2 s."""
    flags = array("B")
    cls = array("I")
    ch = array("H")
    nxt = 2
    for i in range(pages):
        kind = i % 4
        flags.append(PRESENT if kind != 3 else 0)
        if kind == 2:
            cls.append(nxt)
            nxt += 1
        else:
            cls.append(1 if kind == 1 else 0)
        ch.append(4 if kind == 2 and i // 4 < changing else 0)
    proc = CapturedProcess(
        100,
        "qemu-system-x86",
        "qemu",
        "",
        False,
        None,
        [CapturedMapping(0x10000, pages, "", mergeable)],
    )
    return Capture([proc], flags, cls, ch, classes=nxt, snapshots=2, period_s=2.0)


def test_scenario_of_a_capture() -> None:
    sc = capture_scenario(quarter_capture(mergeable=True), knobs={"pages_to_scan": 500})
    ops = [s.op for s in sc.steps]
    assert ops[:2] == ["spawn", "mmap"]
    assert ops[-3:] == ["madvise", "checkpoint", "sysfs"]
    assert sc.sysfs == {"pages_to_scan": 500, "run": 0}
    writes = {s.content: s.pages for s in sc.steps if s.op == "write"}
    assert set(writes) == {"zero", "c1", "unique"}
    # nothing mergeable: no madvise
    sc = capture_scenario(quarter_capture(mergeable=False))
    assert "madvise" not in [s.op for s in sc.steps]
    sc = capture_scenario(quarter_capture(mergeable=False), merge="prctl")
    assert [s.op for s in sc.steps][:2] == ["spawn", "prctl"]


@pytest.mark.parametrize("zero", [0, 1])
def test_prediction_merges_what_the_capture_allows(zero: int) -> None:
    cap = quarter_capture()
    pred = predict(
        cap,
        "6.18",
        {"pages_to_scan": 200, "use_zero_pages": zero},
        duration_s=20,
        merge="all",
    )
    if zero:
        assert (pred.pages_sharing, pred.ksm_zero_pages, pred.pages_shared) == (249, 250, 1)
    else:
        assert (pred.pages_sharing, pred.ksm_zero_pages, pred.pages_shared) == (498, 0, 2)
    assert pred.savings_bytes == (499 if zero else 498) * 4096
    assert [s.t_s for s in pred.samples] == [float(t) for t in range(21)]
    assert pred.samples[0].savings_pages == 0
    t50, t90 = pred.time_to(0.5), pred.time_to(0.9)
    assert t50 is not None and t90 is not None and 0 < t50 <= t90 <= 20
    assert pred.settled
    s = pred.summary()
    assert 0.01 < s["cpu_share"] < 0.05  # 200 pages x 3.5 us per 20 ms sleep
    assert s["ksm_memory_bytes"] == pred.ksm_rmap_items * 64 + pred.stable_nodes * 48
    assert "savings after 20 s" in pred.summary_text()
    # as captured (nothing mergeable): nothing merges, ksmd never runs
    idle = predict(cap, "6.18", {"use_zero_pages": zero}, duration_s=5)
    assert idle.savings_bytes == 0 and idle.cpu_ns == 0 and len(idle.samples) == 6


def test_writes_are_replayed_deterministically() -> None:
    cap = quarter_capture(changing=50)
    a = predict(cap, "6.18", {"pages_to_scan": 1000}, duration_s=10, merge="all")
    b = predict(cap, "6.18", {"pages_to_scan": 1000}, duration_s=10, merge="all")
    assert a.samples == b.samples
    # 50 pages, 4 changes per 2 s: a write every 0.5 s each, 20 in 10 s
    assert 50 * 19 <= a.writes <= 50 * 21
    # the rewritten pages never merge: the duplicates and zero pages still do
    assert a.pages_sharing == 249 + 249


def test_advisor_first_step_counts_ksmd_cpu_since_boot() -> None:
    """Switching advisor_mode to scan-time zeroes the advisor's context, so the kernel's first
    scan_time_advisor compares the first pass with ksmd's CPU time since boot: on a host whose
    ksmd ran for 50 s before, pages_to_scan falls to the floor after the first pass."""
    cap = quarter_capture(4000)
    knobs = {"advisor_mode": "scan-time"}

    def after_first_pass(cpu_base_ns: int) -> int:
        pred = predict(
            cap, "6.18", knobs, duration_s=0.5, sample_s=0.01, merge="all", cpu_base_ns=cpu_base_ns
        )
        assert pred.samples[0].pages_to_scan == 500  # advisor_min_pages_to_scan
        return next(s.pages_to_scan for s in pred.samples if s.full_scans >= 1)

    # 3 000 pages at 500 a batch: the pass takes 1 s (scan_time's floor), a few ms of CPU
    # (cpu_percent 1): per_page_cost 500, the 10% CPU floor lifts pages to 5 000
    assert after_first_pass(0) == 5000
    # 50 s of CPU since boot: cpu_percent 5 000, per_page_cost 1: pages = max(0, 1 x 10)
    assert after_first_pass(50 * 10**9) == 10
    with pytest.raises(ValueError, match="ksmd-cpu-s"):
        predict(cap, "6.18", knobs, duration_s=1, cpu_base_ns=-1)


def test_bad_knob() -> None:
    with pytest.raises(KnobError):
        predict(quarter_capture(), "6.18", {"pages_to_scan": -1}, duration_s=1)
    with pytest.raises(ValueError):
        predict(quarter_capture(), "9.9", {}, duration_s=1)


def test_real_child_prediction(child: Callable[..., Child]) -> None:
    c = child(2000)
    cap = capture_processes([c.pid])
    pred = predict(
        cap, "6.18", {"pages_to_scan": 5000, "use_zero_pages": 1}, duration_s=10, merge="all"
    )
    # at least the child's own 500 duplicates (two KSM pages: max_page_sharing=256) and
    # 500 zero pages
    assert pred.pages_sharing >= 498 and pred.ksm_zero_pages >= 500
    assert pred.savings_bytes <= cap.stats()["saving_pages"] * 4096
    assert os.path.exists(f"/proc/{c.pid}")  # never stopped nor killed
