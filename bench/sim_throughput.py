"""Simulator throughput and memory (issue 2 targets: >= 300,000 pages/s, <= 128 B/page).

Usage: python bench/sim_throughput.py [--pages N] [--big N]

Prints, for N (65,536) pages in one process:
- steady state: all pages unique, smart_scan=0, pages scanned per second over 5 passes
  after 2 warm-up passes;
- merging pass: 25% zero-filled, 25% duplicates (labels shared by 16 pages), 50% unique,
  use_zero_pages=1: the second pass (the one that merges), pages per second;
- bytes of memory per simulated page (tracemalloc, the whole Kernel after the merging
  workload's first three passes) at N and at --big (1,048,576) pages.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim import Kernel  # noqa: E402


def build(pages: int, mixed: bool, smart_scan: int = 1) -> Kernel:
    k = Kernel("6.18", {"use_zero_pages": 1 if mixed else 0, "smart_scan": smart_scan})
    k.spawn("P")
    k.mmap("P", "heap", pages)
    if mixed:
        q = pages // 4
        k.write("P", "heap", ((0, q),), "zero")
        for i in range(q, 2 * q):
            k.write("P", "heap", ((i, i + 1),), f"D{i % (q // 16 or 1)}")
        k.write("P", "heap", ((2 * q, pages),), "unique")
    else:
        k.write("P", "heap", None, "unique")
    k.madvise("P", "heap", None, "MADV_MERGEABLE")
    return k


def timed_passes(k: Kernel, passes: int) -> float:
    scanned = k.pages_scanned
    t0 = time.perf_counter()
    for _ in range(passes):
        k.scan_pass()
    dt = time.perf_counter() - t0
    return (k.pages_scanned - scanned) / dt


def memory_per_page(pages: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    k = build(pages, mixed=True)
    for _ in range(3):
        k.scan_pass()
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del k
    return used / pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=65536)
    parser.add_argument("--big", type=int, default=1048576)
    args = parser.parse_args()
    n = args.pages

    k = build(n, mixed=False, smart_scan=0)
    timed_passes(k, 2)
    steady = timed_passes(k, 5)
    print(f"steady state ({n} unique pages, smart_scan=0): {steady:,.0f} pages scanned/s")

    k = build(n, mixed=True)
    k.scan_pass()
    merging = timed_passes(k, 1)
    g = k.global_counters()
    print(
        f"merging pass ({n} pages: 25% zero, 25% duplicates, 50% unique, use_zero_pages=1): "
        f"{merging:,.0f} pages scanned/s  (pages_shared {g['pages_shared']}, "
        f"pages_sharing {g['pages_sharing']}, ksm_zero_pages {g['ksm_zero_pages']})"
    )

    for pages in (n, args.big):
        print(f"memory at {pages:,} pages: {memory_per_page(pages):.1f} bytes per simulated page")


if __name__ == "__main__":
    main()
