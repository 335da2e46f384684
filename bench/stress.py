"""Content preservation and model consistency at scale.

Usage: python bench/stress.py --sequences N [--seed S] [--steps K] [--jobs J]

Runs N random operation sequences on the simulator, alternating the kernel profiles
("6.18", "6.12", "6.5", "6.1"), with every operation (spawn, fork, exit, mmap, munmap,
write zero/label/unique, read, madvise both ways on sub-ranges, prctl, knob writes including
run=2 and invalid values) and ksmd stepping at every grain (one page, one batch, one pass),
and runs the invariant checker after every step: every page reads back what was last
written to it, counters equal a recomputation, map counts equal the page tables. Prints
the number of sequences, steps and violations; exits 1 if any violation was found (its
seed and step are printed so it can be replayed with --seed S --sequences 1).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim import Kernel, KnobError, SimError, check_invariants  # noqa: E402
from sim.errors import InvariantError  # noqa: E402

PROFILES = ("6.18", "6.12", "6.5", "6.1")
CONTENTS = ("zero", "zero", "A", "A", "B", "C", "unique")
KNOBS = (
    ("use_zero_pages", ("0", "1", "1")),
    ("max_page_sharing", ("2", "3", "256", "1")),
    ("smart_scan", ("0", "1", "1")),
    ("stable_node_chains_prune_millisecs", ("0", "2000")),
    ("pages_to_scan", ("1", "5", "50", "-1")),
    ("run", ("0", "1", "2", "3")),
    ("merge_across_nodes", ("0", "1")),
    ("advisor_mode", ("none", "scan-time")),
)


def _range(rng: random.Random, n: int) -> tuple[tuple[int, int], ...] | None:
    if rng.random() < 0.3:
        return None
    lo = rng.randrange(n)
    return ((lo, rng.randint(lo + 1, n)),)


def one_sequence(seed: int, steps: int) -> tuple[int, str | None]:
    """Run one random sequence; return (steps run, violation or None)."""
    rng = random.Random(seed)
    kernel = PROFILES[seed % len(PROFILES)]
    k = Kernel(kernel, {"use_zero_pages": rng.choice((0, 1)), "pages_to_scan": 7})
    counter = 0
    for step in range(steps):
        procs = sorted(k.procs)
        vmas = [(p, v) for p in procs for v in k.procs[p].vmas]
        op = rng.choice(
            [
                "spawn",
                "fork",
                "exit",
                "mmap",
                "mmap",
                "munmap",
                "write",
                "write",
                "write",
                "read",
                "madvise",
                "prctl",
                "knob",
                "scan",
                "scan",
                "scan",
                "scan",
                "scan",
                "scan",
                "scan",
            ]
        )
        if op == "exit" and rng.random() < 0.5:
            op = "scan"
        try:
            if op == "spawn" and len(procs) < 5:
                counter += 1
                k.spawn(f"p{counter}")
            elif op == "fork" and procs and len(procs) < 5:
                counter += 1
                k.fork(rng.choice(procs), f"p{counter}")
            elif op == "exit" and procs:
                k.exit(rng.choice(procs))
            elif op == "mmap" and procs:
                counter += 1
                proc, name, n = rng.choice(procs), f"v{counter}", rng.randint(1, 24)
                k.mmap(proc, name, n)
                if rng.random() < 0.8:  # most areas are filled and advised at once
                    k.write(proc, name, None, rng.choice(CONTENTS))
                    k.write(proc, name, _range(rng, n), rng.choice(CONTENTS))
                    k.madvise(proc, name, None, "MADV_MERGEABLE")
            elif op == "munmap" and vmas:
                k.munmap(*rng.choice(vmas))
            elif op in ("write", "read", "madvise") and vmas:
                proc, vma = rng.choice(vmas)
                pages = _range(rng, k.vma(proc, vma).npages)
                if op == "write":
                    k.write(proc, vma, pages, rng.choice(CONTENTS))
                elif op == "read":
                    k.read(proc, vma, pages)
                else:
                    advice = rng.choice(("MADV_MERGEABLE", "MADV_MERGEABLE", "MADV_UNMERGEABLE"))
                    k.madvise(proc, vma, pages, advice)
            elif op == "prctl" and procs and k.profile.has_prctl:
                k.prctl(rng.choice(procs), rng.choice((0, 1, 1)))
            elif op == "knob":
                knob, values = rng.choice(KNOBS)
                if knob in k.profile.knobs:
                    k.sysfs_write(knob, rng.choice(values))
            elif op == "scan":
                grain = rng.choice(("page", "batch", "pass", "pass", "scan", "scan"))
                if grain == "page":
                    k.scan_page()
                elif grain == "batch":
                    k.scan_batch()
                elif grain == "pass":
                    k.scan_pass()
                else:
                    k.scan(rng.randint(1, 3))
        except KnobError:
            pass  # rejected writes are part of the test: state must be unchanged
        except SimError as exc:
            return step + 1, f"seed {seed} ({kernel}) step {step} {op}: {exc!r}"
        try:
            check_invariants(k)
        except InvariantError as exc:
            return step + 1, f"seed {seed} ({kernel}) step {step} after {op}: {exc}"
    return steps, None


def _chunk(args: tuple[int, int, int]) -> tuple[int, list[str]]:
    start, count, steps = args
    total, bad = 0, []
    for seed in range(start, start + count):
        n, err = one_sequence(seed, steps)
        total += n
        if err:
            bad.append(err)
    return total, bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    size = max(1, min(200, args.sequences // (args.jobs * 4) or 1))
    chunks = [
        (s, min(size, args.seed + args.sequences - s), args.steps)
        for s in range(args.seed, args.seed + args.sequences, size)
    ]
    steps, violations = 0, []
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for n, bad in pool.map(_chunk, chunks):
                steps += n
                violations += bad
    else:
        for chunk in chunks:
            n, bad = _chunk(chunk)
            steps += n
            violations += bad
    for line in violations[:20]:
        print(line)
    dt = time.perf_counter() - t0
    print(
        f"{args.sequences} sequences, {steps} steps, {len(violations)} violations "
        f"({dt:.1f} s, profiles {', '.join(PROFILES)})"
    )
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
