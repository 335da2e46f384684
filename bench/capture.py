"""Capture speed (issue 17 target: 1 GiB of guest memory captured in under 5 s).

Usage: python bench/capture.py [--mib 1024] [--rounds 3] [--predict]

Starts a child process that maps --mib MiB of private anonymous memory and fills all of it
in 2 MiB blocks, in turn: zero-filled (written), duplicates (the same random page again and
again) and random (every page its own bytes). Then captures it with
``app.kernel.capture.capture_processes`` (the whole process: its interpreter's memory too)
--rounds times and prints, per round,
the seconds, the MB/s of mapped and of present memory read, and the time 1 GiB of mapped
memory takes at that rate; the best and median rounds last. With --predict it also times
``ksmlab predict`` of the capture over 120 simulated seconds (default knobs, merge mode
"all"). Read-only: the child is never stopped. Root gives the KSM state too (kpageflags);
as another user the child (ours) is still readable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.kernel.capture import capture_processes  # noqa: E402

CHILD = r"""
import mmap, os, sys
mib = int(sys.argv[1])
size = mib << 20
m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
block = 2 << 20
dup = os.urandom(4096) * (block // 4096)
for n, off in enumerate(range(0, size, block)):
    kind = n % 3
    if kind == 0:
        m[off:off + block] = bytes(block)
    elif kind == 1:
        m[off:off + block] = dup
    else:
        m[off:off + block] = os.urandom(block)
print("ready", flush=True)
sys.stdin.read()
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--predict", action="store_true")
    args = ap.parse_args()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(args.mib)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        child.stdout.readline()
        times = []
        cap = None
        print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")
        for r in range(args.rounds):
            t0 = time.perf_counter()
            cap = capture_processes([child.pid])
            dt = time.perf_counter() - t0
            s = cap.stats()
            mapped = s["pages"] * 4096
            present = s["present"] * 4096
            times.append((dt, mapped, present))
            print(
                f"round {r + 1}: {dt:.2f} s, {mapped / 1e6 / dt:,.0f} MB/s mapped, "
                f"{present / 1e6 / dt:,.0f} MB/s present ({s['present']} pages: "
                f"{100 * s['zero'] / s['present']:.0f}% zero, "
                f"{100 * s['duplicate'] / s['present']:.0f}% duplicate, "
                f"{100 * s['unique'] / s['present']:.0f}% unique), "
                f"1 GiB mapped in {dt * (1 << 30) / mapped:.2f} s"
            )
        rates = sorted(t[1] / t[0] for t in times)
        best, median = rates[-1], statistics.median(rates)
        print(
            f"capture: best {best / 1e6:,.0f} MB/s (1 GiB in {(1 << 30) / best:.2f} s), "
            f"median {median / 1e6:,.0f} MB/s (1 GiB in {(1 << 30) / median:.2f} s)"
        )
        if args.predict and cap is not None:
            from app.whatif.predict import predict

            t0 = time.perf_counter()
            pred = predict(cap, "6.18", {}, duration_s=120, merge="all")
            dt = time.perf_counter() - t0
            print(
                f"predict: {cap.stats()['present']} pages over 120 simulated s in {dt:.1f} s "
                f"({pred.batches} batches, savings {pred.savings_bytes / (1 << 20):,.0f} MiB)"
            )
    finally:
        if child.poll() is None:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
