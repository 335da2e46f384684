"""Stable-tree walks (issue 16): the chain look-up memo never changes a result, and the
tree keeps the kernel's order and shape through random chain workloads on every profile."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sim import Kernel, check_invariants
from sim.state import StableNode

LABELS = ("A", "B", "C", "D", "E", "zero")


class NoMemo(Kernel):
    """A kernel whose chains never reuse a look-up: every walk redoes stable_node_dup."""

    def _chain_choose(self, chain: StableNode, prune: bool) -> StableNode | None:
        found = super()._chain_choose(chain, prune)
        chain.memo = chain.memo_prune = None
        return found


def workload(k: Kernel, seed: int) -> list[Any]:
    """Labels, zero and unique pages in two processes, rewrites and exits, checkpoints."""
    r = random.Random(seed)
    out: list[Any] = []
    maps: list[tuple[str, str, int]] = []
    for proc in ("P", "Q"):
        k.spawn(proc)
        for vma in ("m", "n"):
            n = r.randint(6, 30)
            k.mmap(proc, vma, n)
            maps.append((proc, vma, n))
            for i in range(n):
                k.write(proc, vma, [[i, i + 1]], r.choice(LABELS + ("unique",)))
            k.madvise(proc, vma, None, "MADV_MERGEABLE")
    k.scan(2)
    for step in range(8):
        for _ in range(r.randint(1, 5)):
            proc, vma, n = r.choice(maps)
            if proc not in k.procs:
                continue
            a = r.randrange(n)
            k.write(proc, vma, [[a, min(n, a + r.randint(1, 4))]], r.choice(LABELS + ("unique",)))
        if step == 5 and r.random() < 0.3:
            k.exit("Q")
        k.scan(r.choice((1, 1, 2, 5, 10)))
        check_invariants(k)
        out.append(k.checkpoint(str(step)))
    return out


@pytest.mark.parametrize("kernel", ["6.18", "6.5"])
@pytest.mark.parametrize("prune", [0, 400, 2000])
def test_chain_memo_changes_nothing(kernel: str, prune: int) -> None:
    for seed in range(25):
        sysfs = {
            "max_page_sharing": 2 + seed % 3,
            "stable_node_chains_prune_millisecs": prune,
            "smart_scan": seed % 2,
        }
        assert workload(Kernel(kernel, sysfs), seed) == workload(NoMemo(kernel, sysfs), seed)
