"""The scan-time advisor (``advisor_mode=scan-time``, 6.8+): ksmd sets its own pages_to_scan.

A port of mm/ksm.c (6.8 to 6.18, unchanged in between): ``advisor_start_scan`` stamps the
pass start with ``ktime_get()``; at the pass end ``advisor_stop_scan`` ->
``scan_time_advisor`` computes, in the kernel's integer arithmetic (unsigned long, divisions
truncate)::

    scan_time     = (now - start_scan) in ms / 1000, at least 1            (seconds)
    cpu_diff_ms   = (ksmd's task_sched_runtime - ctx.cpu_time) / 1000 / 1000
    cpu_percent   = cpu_diff_ms * 100 / (scan_time * 1000), at least 1
    last          = ctx.scan_time or scan_time
    factor        = advisor_target_scan_time * 100 / scan_time, at least 1
    change        = scan_time * 100 / last, at least 1
    change        = ewma(ctx.change, change) = (70 * ctx.change + 30 * change) / 100
    pages         = pages_to_scan * 100 / factor * change / 100
    per_page_cost = pages_to_scan / cpu_percent, at least 1
    pages         = min(pages, per_page_cost * advisor_max_cpu)
    pages         = max(pages, per_page_cost * 10)                    (KSM_ADVISOR_MIN_CPU)
    pages         = min(pages, advisor_max_pages_to_scan)

then stores ``change``, ``scan_time`` and the CPU time in the context and ``pages`` in
pages_to_scan (an unsigned int). ``set_advisor_defaults`` (switching the mode to scan-time)
zeroes the context, so the first pass after it compares against ksmd's CPU time since boot.
``advisor_min_pages_to_scan`` is used only there (the starting pages_to_scan), not as a
floor.

The simulator has no clock of its own for this: a *time model* driver (``sim.timemodel``)
sets :attr:`ksmd_ktime_ns` before each batch and calls ``Kernel.advise`` after a batch
that ended a pass, with the time at the batch's end and ksmd's CPU time so far. Without a
driver the advisor never runs (pages_to_scan stays at its starting value), and with the
advisor off nothing here is touched: recorded traces are unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass

EWMA_WEIGHT = 30
KSM_ADVISOR_MIN_CPU = 10
UINT_MASK = (1 << 32) - 1
ULONG_MASK = (1 << 64) - 1


@dataclass
class AdvisorCtx:
    """struct advisor_ctx, plus whether a pass ended since the last :func:`scan_time_advisor`."""

    start_scan_ns: int = 0
    scan_time: int = 0
    change: int = 0
    cpu_time: int = 0
    #: a pass ended (advisor_stop_scan is due) and the driver has not yet told the time
    due: bool = False


@dataclass(frozen=True)
class AdvisorStep:
    """What one scan_time_advisor computed (the ``ksm_advisor`` trace event, and more)."""

    scan_time: int
    cpu_percent: int
    factor: int
    change: int
    pages: int


def ewma(prev: int, curr: int) -> int:
    return ((100 - EWMA_WEIGHT) * prev + EWMA_WEIGHT * curr) // 100


def scan_time_advisor(
    ctx: AdvisorCtx,
    *,
    now_ns: int,
    cpu_time_ns: int,
    pages_to_scan: int,
    target_scan_time: int,
    max_cpu: int,
    max_pages_to_scan: int,
) -> AdvisorStep:
    """One run of the kernel's scan_time_advisor; updates ``ctx`` and returns the result."""
    # ktime_ms_delta then div_s64(.., MSEC_PER_SEC): both truncate toward zero
    delta_ms = _div0(now_ns - ctx.start_scan_ns, 1_000_000)
    scan_time = _div0(delta_ms, 1000) & ULONG_MASK
    scan_time = scan_time or 1
    cpu_diff = (cpu_time_ns - ctx.cpu_time) & ULONG_MASK
    cpu_diff_ms = cpu_diff // 1000 // 1000
    cpu_percent = ((cpu_diff_ms * 100) // ((scan_time * 1000) & ULONG_MASK)) & UINT_MASK
    cpu_percent = cpu_percent or 1
    last_scan_time = ctx.scan_time or scan_time
    factor = (target_scan_time * 100) // scan_time
    factor = factor or 1
    change = (scan_time * 100) // last_scan_time
    change = change or 1
    change = ewma(ctx.change, change)
    pages = pages_to_scan * 100 // factor
    pages = pages * change // 100
    per_page_cost = pages_to_scan // cpu_percent
    per_page_cost = per_page_cost or 1
    pages = min(pages, per_page_cost * max_cpu)
    pages = max(pages, per_page_cost * KSM_ADVISOR_MIN_CPU)
    pages = min(pages, max_pages_to_scan)
    ctx.change = change
    ctx.scan_time = scan_time
    ctx.cpu_time = cpu_time_ns
    ctx.due = False
    return AdvisorStep(scan_time, cpu_percent, factor, change, pages & UINT_MASK)


def _div0(a: int, b: int) -> int:
    """C division of signed integers (truncates toward zero)."""
    q = abs(a) // b
    return q if a >= 0 else -q
