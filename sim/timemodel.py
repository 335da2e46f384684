"""ksmd's time and CPU, modelled: what a batch costs and how long the host waits for it.

The simulator's own clock (:attr:`sim.state.KsmState.clock_ms`) is the scenario format's:
200 ms per ``scan`` pass, nothing elsewhere; it drives the chain prune timer, as the
recorded traces do. This module is the *time model* on top of it, used by the what-if sweep
(:mod:`app.whatif.sweep`) and the dashboard's "time and money" figures, so that both show
the same numbers:

- **CPU of a batch.** Every page handed to ``cmp_and_merge_page`` whose rmap_item was
  created in that visit costs ``first_ns`` (checksum only: a page never merges on its first
  scan); any other page handed over costs ``later_ns`` (checksum, tree searches, merging);
  each page smart scan skips costs ``skip_ns``. Defaults: 0.9, 3.5 and 0.1 us (measured,
  ``bench/ksmd_costs.py``; ``docs/cpu-model.md``).
- **Time.** ksmd's loop is one batch, then ``sleep_millisecs``: simulated time advances by
  the batch's CPU plus the sleep. Operations between batches take no time.

Every figure is an integer number of nanoseconds, so results are reproducible bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

from .changes import ChangeLog


@dataclass(frozen=True)
class CpuCosts:
    """Modelled ksmd CPU per page, in nanoseconds."""

    first_ns: int = 900
    later_ns: int = 3500
    skip_ns: int = 100

    @classmethod
    def from_us(cls, first: float, later: float, skip: float) -> CpuCosts:
        return cls(round(first * 1000), round(later * 1000), round(skip * 1000))


@dataclass(frozen=True)
class BatchCost:
    """What one ksmd batch cost: pages by kind, its CPU and the time it took with its sleep."""

    first: int
    later: int
    skipped: int
    cpu_ns: int
    time_ns: int


def first_pass_pages(log: ChangeLog) -> int:
    """Pages whose rmap_item was created in the batch the change log covers."""
    return sum(1 for kind, _ in log.events if kind == "item_new")


def batch_cost(
    costs: CpuCosts, handed: int, first: int, skipped: int, sleep_millisecs: int
) -> BatchCost:
    """The cost of a batch that handed ``handed`` pages to ``cmp_and_merge_page`` (``first``
    of them on their first visit) and skipped ``skipped`` pages, followed by its sleep."""
    later = handed - first
    cpu = first * costs.first_ns + later * costs.later_ns + skipped * costs.skip_ns
    return BatchCost(first, later, skipped, cpu, cpu + sleep_millisecs * 1_000_000)


@dataclass
class TimeAccount:
    """Running totals of the batches charged so far: simulated time and ksmd's CPU."""

    now_ns: int = 0
    cpu_ns: int = 0
    batches: int = 0
    first: int = 0
    later: int = 0
    skipped: int = 0

    def charge(self, cost: BatchCost) -> None:
        self.now_ns += cost.time_ns
        self.cpu_ns += cost.cpu_ns
        self.batches += 1
        self.first += cost.first
        self.later += cost.later
        self.skipped += cost.skipped

    @property
    def cpu_share(self) -> float | None:
        """ksmd's CPU over simulated time (what ``top`` shows), None before any time."""
        return self.cpu_ns / self.now_ns if self.now_ns else None
