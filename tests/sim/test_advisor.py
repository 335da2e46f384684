"""The scan-time advisor (``advisor_mode=scan-time``, 6.8+), B80-B86.

Expected values are the kernel's integer arithmetic (mm/ksm.c ``scan_time_advisor``, the
same in 6.12 and 6.18) computed by hand in each docstring, not by running the simulator.
"""

from __future__ import annotations

import pytest

from sim import Kernel, KnobError
from sim.advisor import AdvisorCtx, ewma, scan_time_advisor
from sim.timemodel import BatchClock, CpuCosts

S = 1_000_000_000  # ns per second


def _unique_area(pages: int, sysfs: dict[str, object]) -> Kernel:
    k = Kernel("6.18", sysfs, record=True)
    k.spawn("P")
    k.mmap("P", "m", pages)
    k.write("P", "m", None, "unique")
    k.madvise("P", "m", None, "MADV_MERGEABLE")
    return k


def test_b80_first_pass_arithmetic() -> None:
    """B80: a fresh context, a pass of 3.5 s that used 1.2 s of CPU, pages_to_scan 500:
    scan_time = 3500 ms / 1000 = 3; cpu_percent = 1200 * 100 / 3000 = 40; last = 3;
    factor = 200 * 100 / 3 = 6666; change = ewma(0, 300 / 3 = 100) = 30 * 100 / 100 = 30;
    pages = 500 * 100 / 6666 = 7, then 7 * 30 / 100 = 2; per_page_cost = 500 / 40 = 12;
    min(2, 12 * 70) = 2; max(2, 12 * 10) = 120; min(120, 30000) = 120."""
    ctx = AdvisorCtx()
    step = scan_time_advisor(
        ctx,
        now_ns=3_500_000_000,
        cpu_time_ns=1_200_000_000,
        pages_to_scan=500,
        target_scan_time=200,
        max_cpu=70,
        max_pages_to_scan=30000,
    )
    assert (step.scan_time, step.cpu_percent, step.factor, step.change, step.pages) == (
        3,
        40,
        6666,
        30,
        120,
    )
    assert (ctx.scan_time, ctx.change, ctx.cpu_time) == (3, 30, 1_200_000_000)


def test_b81_second_pass_uses_the_ewma_of_the_change() -> None:
    """B81: after B80, a pass from 10 s to 260 s using 2.5 s more CPU, pages_to_scan 120:
    scan_time = 250; cpu_percent = 2500 * 100 / 250000 = 1; factor = 20000 / 250 = 80;
    change = 25000 / 3 = 8333, ewma(30, 8333) = (70 * 30 + 30 * 8333) / 100 = 2520;
    pages = 120 * 100 / 80 = 150, 150 * 2520 / 100 = 3780; per_page_cost = 120 / 1 = 120;
    min(3780, 8400) = 3780; max(3780, 1200) = 3780; min(3780, 30000) = 3780."""
    ctx = AdvisorCtx(start_scan_ns=10 * S, scan_time=3, change=30, cpu_time=1_200_000_000)
    step = scan_time_advisor(
        ctx,
        now_ns=260 * S,
        cpu_time_ns=3_700_000_000,
        pages_to_scan=120,
        target_scan_time=200,
        max_cpu=70,
        max_pages_to_scan=30000,
    )
    assert (step.scan_time, step.cpu_percent, step.factor, step.change, step.pages) == (
        250,
        1,
        80,
        2520,
        3780,
    )
    assert ewma(30, 8333) == 2520


def test_b82_caps_max_cpu_and_max_pages() -> None:
    """B82: pages_to_scan 1000, a 1 s pass using 0.9 s of CPU (cpu_percent 90) after a 1 s
    pass (change 100, ewma(100, 100) = 100), target 1 s: factor 100, pages = 1000;
    per_page_cost = 1000 / 90 = 11; min(1000, 11 * 70 = 770) = 770. With max_pages 500:
    500."""
    for max_pages, want in ((30000, 770), (500, 500)):
        ctx = AdvisorCtx(start_scan_ns=0, scan_time=1, change=100, cpu_time=0)
        step = scan_time_advisor(
            ctx,
            now_ns=1_999_000_000,
            cpu_time_ns=900_000_000,
            pages_to_scan=1000,
            target_scan_time=1,
            max_cpu=70,
            max_pages_to_scan=max_pages,
        )
        assert (step.scan_time, step.cpu_percent, step.factor, step.pages) == (1, 90, 100, want)


@pytest.mark.parametrize("kernel", ["6.18", "6.12"])
def test_b83_mode_switch_sets_defaults(kernel: str) -> None:
    """B83: scan-time sets pages_to_scan to advisor_min_pages_to_scan and zeroes the
    context; pages_to_scan is then refused (EINVAL); writing the same mode again resets
    nothing; none puts pages_to_scan back to 100."""
    k = Kernel(kernel)
    k.sysfs_write("advisor_min_pages_to_scan", 700)
    k.sysfs_write("advisor_mode", "scan-time")
    assert k.sysfs_read("pages_to_scan") == "700"
    assert k.sysfs_read("advisor_mode") == "none [scan-time]"
    with pytest.raises(KnobError) as exc:
        k.sysfs_write("pages_to_scan", 100)
    assert exc.value.errno == "EINVAL"
    k.advisor.change = 55
    k.sysfs_write("advisor_mode", "scan-time")
    assert k.advisor.change == 55
    k.sysfs_write("advisor_mode", "none")
    assert k.sysfs_read("pages_to_scan") == "100"
    k.sysfs_write("advisor_mode", "scan-time")
    assert k.advisor == AdvisorCtx()


def test_b84_runs_at_pass_ends_on_the_time_model_clock() -> None:
    """B84: 1200 unique pages, pages_to_scan 500 (the advisor's start), sleep 20 ms, every
    page 1 us. Pass 1 is three batches (500, 500, 200): it ends at 2 * (0.5 + 20) + 0.2 =
    41.2 ms, with 1.2 ms of CPU. scan_time 0 -> 1; cpu_percent 1 * 100 / 1000 = 0 -> 1;
    factor 20000; change ewma(0, 100) = 30; pages 500 * 100 / 20000 = 2, 2 * 30 / 100 = 0;
    per_page_cost 500; max(0, 500 * 10) = 5000. pages_to_scan changes only at the pass end."""
    k = _unique_area(1200, {"advisor_mode": "scan-time", "sleep_millisecs": 20})
    clock = BatchClock(k, CpuCosts(first_ns=1000, later_ns=1000, skip_ns=0))
    k.start_scan()
    seen = []
    for _ in range(3):
        clock.before()
        n = k.scan_batch()
        clock.after(n)
        seen.append((n, k.knobs["pages_to_scan"]))
    assert seen == [(500, 500), (500, 500), (200, 5000)]
    assert clock.time.cpu_ns == 1_200_000 and k.seqnr == 1
    assert (k.advisor.scan_time, k.advisor.change, k.advisor.cpu_time) == (1, 30, 1_200_000)


def test_b85_first_pass_counts_ksmd_cpu_since_boot() -> None:
    """B85: switching the mode zeroes the context's cpu_time, so the first pass compares
    ksmd's whole run time with one pass: after 1000 s of CPU since boot, B84's pass gives
    cpu_diff_ms 1000001, cpu_percent 100000100 / 1000 = 100000; per_page_cost 500 / 100000
    = 0 -> 1; pages max(0, 1 * 10) = 10."""
    k = _unique_area(1200, {"advisor_mode": "scan-time", "sleep_millisecs": 20})
    clock = BatchClock(k, CpuCosts(first_ns=1000, later_ns=1000, skip_ns=0), cpu_base_ns=1000 * S)
    k.start_scan()
    for _ in range(3):
        clock.before()
        clock.after(k.scan_batch())
    assert k.knobs["pages_to_scan"] == 10


def test_b86_advisor_off_or_no_clock_changes_nothing() -> None:
    """B86: with the advisor off a timed run keeps pages_to_scan; with it on but no time
    model (scenario replays, traces), pages_to_scan stays at its starting value."""
    for sysfs, want in (({}, 100), ({"advisor_mode": "scan-time"}, 500)):
        k = _unique_area(300, sysfs)
        if not sysfs:
            clock = BatchClock(k, CpuCosts())
            k.start_scan()
            for _ in range(10):
                clock.before()
                clock.after(k.scan_batch())
        else:
            k.scan(5)
        assert k.knobs["pages_to_scan"] == want
