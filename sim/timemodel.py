"""ksmd's time and CPU, modelled: what a batch costs and how long the host waits for it.

The simulator's own clock (:attr:`sim.state.KsmState.clock_ms`) is the scenario format's:
200 ms per ``scan`` pass, nothing elsewhere; it drives the chain prune timer, as the
recorded traces do. This module is the *time model* on top of it, used by the what-if sweep
(:mod:`app.whatif.sweep`), the what-if prediction and the dashboard's "time and money"
figures, so that all show the same numbers:

- **CPU of a batch.** Every page ksmd looks at is of exactly one kind, each with its cost
  (:class:`CpuCosts`, ``docs/cpu-model.md``):

  ============  =================================================================  =========
  kind          the page, in this visit                                            from
  ============  =================================================================  =========
  ``first``     its rmap_item was created (checksum only)                          item_new
  ``later``     any other page handed to cmp_and_merge_page that did not merge     the rest
  ``merge``     merged with a page of the unstable tree (a new KSM page)             merge_new
  ``stable``    merged into an existing KSM page (a stable tree match)              merge
  ``zero``      merged with the zero page (``use_zero_pages``)                     zero_merge
  ``ksm``       already a KSM page with its item on the node (nothing to do)       revisit
  ``skipped``   smart scan skipped it                                              pages_skipped
  ============  =================================================================  =========

  plus ``pass_ns`` for every pass that ends in the batch (the pass start's LRU drain, the
  mm list walk), and ``batch_ns`` for every batch: what a batch costs beyond its pages
  (waking up, the caches and TLB a 20 ms sleep left cold; measured here at 25-45 us, which
  a batch of 10 pages doubles and a batch of 1 000 hardly notices), and ``file_ns`` for
  every page-cache page ksmd walks in each pass the batch ends: a
  present page of a mergeable private file mapping with an anon_vma that is not anonymous
  (``scan_get_next_rmap_item`` finds the folio, sees it is not anonymous and goes on: no
  rmap_item, not in ``pages_to_scan``). The simulator never sees those pages (they are not
  present in it), so they are charged per pass, all at the pass's end: ``walk_pages`` of
  :class:`BatchClock` (a capture's :meth:`sim.capture.Capture.walked_file_pages`). A cost
  left at ``None`` is charged as ``later_ns`` (the model before the kinds were split).
- **Time.** ksmd's loop is one batch, then ``sleep_millisecs``: simulated time advances by
  the batch's CPU plus the sleep plus ``wake_ns`` (the wall time a real ksmd loses per
  batch: jiffy rounding, waiting for a CPU). Operations between batches take no time.
- **The advisor.** With ``advisor_mode=scan-time`` the kernel retunes pages_to_scan at each
  pass end from the pass's duration and ksmd's CPU (:mod:`sim.advisor`): :class:`BatchClock`
  gives the kernel this model's clock before each batch and calls ``Kernel.advise`` after.

Every figure is an integer number of nanoseconds, so results are reproducible bit for bit.
A *calibration file* (``ksmlab calibrate``, :func:`load_calibration`) holds costs measured on
one machine's kernel.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from .changes import ChangeLog

CALIBRATION_FORMAT = "ksmlab-calibration/1"


#: costs that may be None (charged as another kind's)
OPTIONAL_COSTS = ("merge_ns", "zero_ns", "ksm_ns", "thp_first_ns", "thp_later_ns", "stable_ns")


@dataclass(frozen=True)
class CpuCosts:
    """Modelled ksmd CPU per page by kind and per pass, in nanoseconds."""

    first_ns: int = 900
    later_ns: int = 3500
    skip_ns: int = 100
    #: a page merged in this visit (None: charged as later_ns)
    merge_ns: int | None = None
    #: a page merged with the zero page in this visit (None: charged as later_ns)
    zero_ns: int | None = None
    #: an already merged KSM page revisited (None: charged as later_ns)
    ksm_ns: int | None = None
    #: every pass
    pass_ns: int = 0
    #: wall time per batch beyond its CPU and sleep_millisecs (not CPU): the sleep's jiffy
    #: rounding and the delay before a nice-5 kernel thread runs again on a busy host
    wake_ns: int = 0
    #: CPU of every batch beyond its pages: waking up, caches and TLB cold after the sleep
    batch_ns: int = 0
    #: a page-cache page of a mergeable file mapping walked (and skipped) in a pass
    file_ns: int = 0
    #: a first / later visit of a page still mapped by a transparent huge page (one PMD
    #: entry for 512 pages: a shorter walk, a warm TLB; None: as first_ns / later_ns)
    thp_first_ns: int | None = None
    thp_later_ns: int | None = None
    #: a page merged into an existing KSM page in this visit (one page write-protected and
    #: replaced, against two pages and a new stable node for ``merge_ns``; None: as
    #: merge_ns)
    stable_ns: int | None = None

    @classmethod
    def from_us(
        cls,
        first: float,
        later: float,
        skip: float,
        *,
        merge: float | None = None,
        zero: float | None = None,
        ksm: float | None = None,
        pass_us: float = 0.0,
        wake_us: float = 0.0,
        batch_us: float = 0.0,
        file_us: float = 0.0,
    ) -> CpuCosts:
        def ns(v: float | None) -> int | None:
            return None if v is None else round(v * 1000)

        return cls(
            round(first * 1000),
            round(later * 1000),
            round(skip * 1000),
            ns(merge),
            ns(zero),
            ns(ksm),
            round(pass_us * 1000),
            round(wake_us * 1000),
            round(batch_us * 1000),
            round(file_us * 1000),
        )

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> CpuCosts:
        """From :meth:`as_dict`'s shape; unknown keys are refused, missing ones default."""
        names = {f.name for f in fields(cls)}
        bad = sorted(set(doc) - names)
        if bad:
            raise ValueError(f"unknown cost {bad[0]!r} (known: {', '.join(sorted(names))})")
        out: dict[str, int | None] = {}
        for name, value in doc.items():
            if value is None and name in OPTIONAL_COSTS:
                out[name] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"cost {name!r} must be a non-negative integer (ns)")
            out[name] = value
        return cls(**out)  # type: ignore[arg-type]


#: this machine's kernel as ``ksmlab calibrate`` measured it (6.18.44, 2 vCPUs AMD EPYC, a
#: shared virtual machine; median of 3 rounds of 20 000 pages, 4 December 2026 23:48 UTC,
#: quiet: load 0.3; one at 19:30 UTC, load 0.1-0.3, agreed within 1-13% per page kind; the
#: one before, at load 4, had later pages 39% dearer and the per-pass cost 2.3 times):
#: the default of the what-if check. ``CpuCosts()`` keeps the sweep's historical figures
#: (0.9, 3.5, 0.1 us), so that sweep CSVs stay comparable.
MACHINE_COSTS = CpuCosts(
    first_ns=1142,
    later_ns=4018,
    skip_ns=236,
    merge_ns=6976,
    zero_ns=2775,
    ksm_ns=334,
    pass_ns=54_912,
    file_ns=21,
)


@dataclass(frozen=True)
class BatchCost:
    """What one ksmd batch cost: pages by kind, its CPU and the time it took with its sleep."""

    first: int
    later: int
    skipped: int
    cpu_ns: int
    time_ns: int
    merged: int = 0
    zero: int = 0
    ksm: int = 0
    passes: int = 0
    #: page-cache pages walked (charged at the end of each pass)
    file: int = 0


def first_pass_pages(log: ChangeLog) -> int:
    """Pages whose rmap_item was created in the batch the change log covers."""
    return sum(1 for kind, _ in log.events if kind == "item_new")


@dataclass(frozen=True)
class BatchKinds:
    """The pages of one batch by kind (see the module doc); ``handed`` includes all but
    ``skipped``. A page on its first visit is ``first`` whatever else happens to it (on
    6.5 and older a first visit can merge: charged as first)."""

    handed: int
    first: int
    merged: int
    zero: int
    ksm: int
    skipped: int
    passes: int
    #: of ``first`` / of the later pages: pages still mapped by a transparent huge page
    thp_first: int = 0
    thp_later: int = 0
    #: of ``merged``: pages merged into an existing KSM page (kind ``stable``)
    stable: int = 0

    @property
    def later(self) -> int:
        return max(0, self.handed - self.first - self.merged - self.zero - self.ksm)


def batch_kinds(
    log: ChangeLog,
    handed: int,
    skipped: int,
    ksm: int,
    thp_handed: int = 0,
    in_thp: Callable[[int], bool] | None = None,
) -> BatchKinds:
    """Classify a batch's pages from its change log (``ksm``: the kernel's growth of
    ``ksm_revisits`` over the batch; ``thp_handed``: of ``handed``, the pages still mapped
    by a transparent huge page, ``in_thp(key)`` telling which first visits were)."""
    new: set[int] = set()
    merged: set[int] = set()
    stable: set[int] = set()
    zero: set[int] = set()
    merge_new = 0
    passes = 0
    for kind, key in log.events:
        if kind == "item_new":
            new.add(key)
        elif kind == "merge":
            merged.add(key)
            stable.add(key)
        elif kind == "ksm_append":
            merged.add(key)
        elif kind == "merge_new":
            # logged for the tree's page, then for the page ksmd holds: count the second
            merge_new += 1
            if merge_new % 2 == 0:
                merged.add(key)
        elif kind == "zero_merge":
            zero.add(key)
        elif kind == "pass_end":
            passes += 1
    kinds = BatchKinds(
        handed,
        len(new),
        len(merged - new),
        len(zero - new),
        ksm,
        skipped,
        passes,
        stable=len(stable - new),
    )
    if not thp_handed or in_thp is None:
        return kinds
    thp_first = sum(1 for key in new if in_thp(key))
    thp_later = min(kinds.later, max(0, thp_handed - thp_first))
    return dataclasses.replace(kinds, thp_first=thp_first, thp_later=thp_later)


def kinds_cost(
    costs: CpuCosts, kinds: BatchKinds, sleep_millisecs: int, walk_pages: int = 0
) -> BatchCost:
    """The cost of a batch of these kinds, followed by its sleep; every pass it ends also
    walked ``walk_pages`` page-cache pages."""
    later = costs.later_ns
    file = kinds.passes * walk_pages
    thp_first = costs.first_ns if costs.thp_first_ns is None else costs.thp_first_ns
    thp_later = later if costs.thp_later_ns is None else costs.thp_later_ns
    merge = later if costs.merge_ns is None else costs.merge_ns
    cpu = (
        (kinds.first - kinds.thp_first) * costs.first_ns
        + kinds.thp_first * thp_first
        + (kinds.later - kinds.thp_later) * later
        + kinds.thp_later * thp_later
        + (kinds.merged - kinds.stable) * merge
        + kinds.stable * (merge if costs.stable_ns is None else costs.stable_ns)
        + kinds.zero * (later if costs.zero_ns is None else costs.zero_ns)
        + kinds.ksm * (later if costs.ksm_ns is None else costs.ksm_ns)
        + kinds.skipped * costs.skip_ns
        + kinds.passes * costs.pass_ns
        + costs.batch_ns
        + file * costs.file_ns
    )
    return BatchCost(
        kinds.first,
        kinds.later,
        kinds.skipped,
        cpu,
        cpu + sleep_millisecs * 1_000_000 + costs.wake_ns,
        kinds.merged,
        kinds.zero,
        kinds.ksm,
        kinds.passes,
        file,
    )


def batch_cost(
    costs: CpuCosts, handed: int, first: int, skipped: int, sleep_millisecs: int
) -> BatchCost:
    """The cost of a batch that handed ``handed`` pages to ``cmp_and_merge_page`` (``first``
    of them on their first visit) and skipped ``skipped`` pages, followed by its sleep
    (the two-kind model: merges, zero pages and KSM revisits are charged as later pages)."""
    return kinds_cost(costs, BatchKinds(handed, first, 0, 0, 0, skipped, 0), sleep_millisecs)


@dataclass
class TimeAccount:
    """Running totals of the batches charged so far: simulated time and ksmd's CPU."""

    now_ns: int = 0
    cpu_ns: int = 0
    batches: int = 0
    first: int = 0
    later: int = 0
    skipped: int = 0
    merged: int = 0
    zero: int = 0
    ksm: int = 0
    passes: int = 0
    file: int = 0

    def charge(self, cost: BatchCost) -> None:
        self.now_ns += cost.time_ns
        self.cpu_ns += cost.cpu_ns
        self.batches += 1
        self.first += cost.first
        self.later += cost.later
        self.skipped += cost.skipped
        self.merged += cost.merged
        self.zero += cost.zero
        self.ksm += cost.ksm
        self.passes += cost.passes
        self.file += cost.file

    @property
    def not_first(self) -> int:
        """Pages handed over after their first visit (every kind but first and skipped)."""
        return self.later + self.merged + self.zero + self.ksm

    @property
    def cpu_share(self) -> float | None:
        """ksmd's CPU over simulated time (what ``top`` shows), None before any time."""
        return self.cpu_ns / self.now_ns if self.now_ns else None


class _TimedKernel(Protocol):
    """What :class:`BatchClock` needs of a :class:`sim.Kernel`."""

    pages_skipped: int
    ksm_revisits: int
    thp_handed: int
    ksmd_ktime_ns: int
    knobs: dict[str, Any]

    def take_changes(self) -> ChangeLog: ...

    def advise(self, now_ns: int, cpu_ns: int) -> int | None: ...

    def in_thp(self, key: int) -> bool: ...


class BatchClock:
    """Charges the batches of one kernel (created with ``record=True``) to a
    :class:`TimeAccount`, and runs the kernel's advisor on this clock.

    Call :meth:`before` just before a batch and :meth:`after` just after it with the pages
    it handed over. ``cpu_base_ns`` is ksmd's CPU time before the first batch (what the
    advisor's first pass compares against: the real ksmd's runtime since boot).
    ``walk_pages``: page-cache pages ksmd walks in every pass (charged ``file_ns`` each at
    every pass end; see the module doc).
    """

    def __init__(
        self,
        kernel: _TimedKernel,
        costs: CpuCosts,
        account: TimeAccount | None = None,
        cpu_base_ns: int = 0,
        walk_pages: int = 0,
    ) -> None:
        self.k = kernel
        self.costs = costs
        self.time = account if account is not None else TimeAccount()
        self.cpu_base_ns = cpu_base_ns
        self.walk_pages = walk_pages
        self._skipped0 = 0
        self._ksm0 = 0
        self._thp0 = 0

    def before(self) -> None:
        k = self.k
        k.take_changes()
        k.ksmd_ktime_ns = self.time.now_ns
        self._skipped0 = k.pages_skipped
        self._ksm0 = k.ksm_revisits
        self._thp0 = k.thp_handed

    def after(self, handed: int) -> BatchCost:
        k = self.k
        log = k.take_changes()
        kinds = batch_kinds(
            log,
            handed,
            k.pages_skipped - self._skipped0,
            k.ksm_revisits - self._ksm0,
            k.thp_handed - self._thp0,
            k.in_thp,
        )
        cost = kinds_cost(self.costs, kinds, int(k.knobs["sleep_millisecs"]), self.walk_pages)
        end_of_cpu = self.time.now_ns + cost.cpu_ns
        self.time.charge(cost)
        if kinds.passes:
            k.advise(end_of_cpu, self.cpu_base_ns + self.time.cpu_ns)
        return cost


def load_calibration(path: str | Path) -> CpuCosts:
    """The costs of a calibration file (``ksmlab calibrate``); ValueError with a reason."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read calibration {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"calibration {path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != CALIBRATION_FORMAT:
        raise ValueError(f"calibration {path}: format is not {CALIBRATION_FORMAT!r}")
    costs = doc.get("costs")
    if not isinstance(costs, dict):
        raise ValueError(f"calibration {path}: no 'costs' object")
    if "file_ns" not in costs:  # a file from before file_ns was measured: this machine's
        costs = {**costs, "file_ns": MACHINE_COSTS.file_ns}
    try:
        return CpuCosts.from_dict(costs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"calibration {path}: {exc}") from None


def calibration_doc(costs: CpuCosts, **facts: Any) -> dict[str, Any]:
    """A calibration file's document: the costs and how they were measured."""
    return {"format": CALIBRATION_FORMAT, "costs": costs.as_dict(), **facts}
