"""What-if sweeps: a grid of sysfs knobs x presets, run in the simulator.

One *run* replays a preset with some knobs overridden, feeding a
:class:`sim.stepper.Stepper` (the same "what comes next" as the dashboard's timeline) so that
ksmd runs batch by batch (``pages_to_scan`` pages each) instead of the replayer's
one-batch-per-pass ``scan`` steps, and then lets ksmd keep running until merging settles.

Definitions (also in ``docs/cpu-model.md``):

- **Replay.** The preset's steps run up to its ``sweep_until`` checkpoint if it names one
  (a story that ends by unmerging stops before that), else to the end. Every non-``scan``
  step is applied as in :func:`sim.run_scenario`; a ``scan N`` step runs ksmd (run=1)
  batch by batch until ``full_scans`` has advanced by N (or no mm is left to scan), then
  stops it (run=0). The state
  at each checkpoint is therefore the same as in the scenario's trace, whatever
  ``pages_to_scan`` is. A preset ``sysfs`` step still runs (a story that switches
  ``smart_scan`` off does so here too).
- **Time.** ksmd's loop is one batch, then ``sleep_millisecs``. Simulated time advances by
  the batch's modelled CPU time plus ``sleep_millisecs`` for every batch; the operations
  between ``scan`` steps take no time.
- **Settled.** After the last step ksmd keeps running. The run is settled at the end of the
  first full pass over which the merge counters did not change: ``pages_shared``,
  ``pages_sharing``, ``ksm_zero_pages``, ``ksm_rmap_items`` (so ``general_profit``),
  ``stable_node_chains`` and ``stable_node_dups``. ``pages_unshared`` is left out: smart scan
  takes skipped pages out of the unstable tree, so it never stops moving. A run with no
  registered process is settled at once (ksmd has nothing to do). **Time to settle** is the
  simulated time at the end of the last batch that changed one of those counters (0 if none
  did); runs that have not settled after ``max_passes`` extra passes are reported unsettled.
- **CPU share.** Modelled CPU divided by simulated time: what ``top`` would show for ksmd
  while it runs (``pages_to_scan`` and ``sleep_millisecs`` trade it against time to settle).
- **CPU model.** Every page handed to ``cmp_and_merge_page`` whose rmap_item was created in
  that visit costs ``first_us`` (checksum only); any other page handed over costs
  ``later_us`` (checksum, tree searches, merging); each page smart scan skips costs
  ``skip_us``. Defaults: 0.9, 3.5 and 0.1 us (measured, see ``bench/ksmd_costs.py``).

Results are plain dataclasses; every number is an integer (times in nanoseconds) so the
CSV is identical from run to run and machine to machine. :func:`run_sweep` hands the runs
to a *runner* (:func:`pool_runner`, the embedded default; :func:`serial_runner`; a Dask
cluster's in :mod:`app.whatif.cluster`) and keeps each finished run in a store
(:mod:`app.whatif.store`) under :func:`point_key`, so a killed sweep resumes. Standard
library and ``sim`` only; the HTML report lives in :mod:`app.whatif.report`, the CLI in
:mod:`app.whatif.cli`; resuming and Dask: ``docs/sweeps.md``.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import sim
from sim import Kernel, KnobError, Scenario, SimError, UnsupportedError
from sim.capture import Capture
from sim.kernel import PAGE_SIZE, RMAP_ITEM_SIZE
from sim.presets import load_preset
from sim.runner import check_supported
from sim.scenario import Step
from sim.stepper import Action, Inject, Next, Stepper
from sim.timemodel import BatchClock, CpuCosts

from . import predict as _predict

#: knobs a sweep may vary (in CSV column order; each a knob of :data:`sim.ksm_files.KNOBS`)
SWEEP_KNOBS = (
    "pages_to_scan",
    "sleep_millisecs",
    "use_zero_pages",
    "smart_scan",
    "max_page_sharing",
)

#: the counters whose stillness over a full pass means "settled": files of
#: :mod:`sim.ksm_files` (global counters, and the rmap_items the ``ksm_stat`` lines sum up),
#: read from the kernel's attributes of those names
SETTLE_COUNTERS = (
    "pages_shared",
    "pages_sharing",
    "ksm_zero_pages",
    "ksm_rmap_items",
    "stable_node_chains",
    "stable_node_dups",
)
DEFAULT_MAX_PASSES = 64
#: safety net against a grid point that never ends a pass
MAX_BATCHES = 2_000_000


@dataclass(frozen=True)
class SweepPoint:
    """One run: a preset, a kernel profile and knob overrides (in grid order)."""

    preset: str
    kernel: str
    knobs: tuple[tuple[str, int], ...]


@dataclass
class SweepResult:
    preset: str
    kernel: str
    #: effective knob values (None where the kernel lacks the knob)
    knobs: dict[str, int | None] = field(default_factory=dict)
    settled: bool = False
    settle_ns: int | None = None
    total_ns: int = 0
    batches: int = 0
    passes: int = 0
    general_profit: int = 0
    pages_shared: int = 0
    pages_sharing: int = 0
    ksm_zero_pages: int = 0
    pages_scanned: int = 0
    pages_skipped: int = 0
    first_pass_pages: int = 0
    later_pass_pages: int = 0
    cpu_ns: int = 0
    error: str = ""


#: the result's whole-number fields, written as they are
COUNT_COLUMNS = (
    "batches",
    "passes",
    "general_profit",
    "pages_shared",
    "pages_sharing",
    "ksm_zero_pages",
    "pages_scanned",
    "pages_skipped",
    "first_pass_pages",
    "later_pass_pages",
)

CSV_COLUMNS = (
    ("preset",)
    + ("kernel",)
    + SWEEP_KNOBS
    + (
        "settled",
        "settle_ms",
        "total_ms",
    )
    + COUNT_COLUMNS
    + (
        "cpu_ms",
        "cpu_share_pct",
        "error",
    )
)


# ------------------------------------------------------------------------------ grid
def parse_grid(specs: Iterable[str]) -> list[tuple[str, list[int]]]:
    """``["pages_to_scan=100,1000", ...]`` -> ``[("pages_to_scan", [100, 1000]), ...]``."""
    grid: list[tuple[str, list[int]]] = []
    for spec in specs:
        knob, sep, values = spec.partition("=")
        knob = knob.strip()
        if not sep or knob not in SWEEP_KNOBS:
            raise ValueError(
                f"bad --grid {spec!r}: expected KNOB=V1,V2,... with KNOB one of "
                + ", ".join(SWEEP_KNOBS)
            )
        if any(k == knob for k, _ in grid):
            raise ValueError(f"knob {knob!r} appears twice in the grid")
        try:
            nums = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"bad --grid {spec!r}: values must be integers") from None
        if not nums or any(n < 0 for n in nums):
            raise ValueError(f"bad --grid {spec!r}: give one or more integers >= 0")
        grid.append((knob, nums))
    return grid


def expand_grid(
    presets: Sequence[str], grid: Sequence[tuple[str, Sequence[int]]], kernel: str = "6.18"
) -> list[SweepPoint]:
    """Presets (outer loop) x the product of the knob values, in the order given."""
    names = [k for k, _ in grid]
    combos = list(itertools.product(*(values for _, values in grid)))
    return [
        SweepPoint(preset, kernel, tuple(zip(names, combo, strict=True)))
        for preset in presets
        for combo in combos
    ]


# ------------------------------------------------------------------ a capture as a source
#: the prefix of a capture's name in a sweep's ``preset`` column
CAPTURE_PREFIX = "capture:"
DEFAULT_CAPTURE_DURATION_S = 120.0


@dataclass(frozen=True)
class CaptureSource:
    """A capture as a sweep's source, next to the presets: each of its runs is a
    prediction (:func:`app.whatif.predict.predict`) over ``duration_s`` simulated seconds
    with the run's knobs, the mappings made mergeable as ``merge`` says."""

    name: str
    capture: Capture = field(repr=False, compare=False)
    duration_s: float = DEFAULT_CAPTURE_DURATION_S
    merge: str = "captured"
    #: the capture's SHA-256 (:meth:`sim.capture.Capture.digest`), part of the run's key
    digest: str = ""

    @classmethod
    def of(
        cls,
        name: str,
        capture: Capture,
        duration_s: float = DEFAULT_CAPTURE_DURATION_S,
        merge: str = "captured",
    ) -> CaptureSource:
        return cls(CAPTURE_PREFIX + name, capture, duration_s, merge, capture.digest())

    def key_doc(self) -> dict[str, Any]:
        return {"capture": self.digest, "duration_s": self.duration_s, "merge": self.merge}


Source = Scenario | CaptureSource


def run_capture_point(
    point: SweepPoint, source: CaptureSource, costs: CpuCosts | None = None
) -> SweepResult:
    """One grid point over a capture: a prediction, reported as a sweep row."""
    result = SweepResult(point.preset, point.kernel)
    try:
        k = Kernel(point.kernel, dict(point.knobs))
        result.knobs = _knob_values(k)
        pred = _predict.predict(
            source.capture,
            point.kernel,
            dict(point.knobs),
            duration_s=source.duration_s,
            costs=costs or CpuCosts(),
            merge=source.merge,
        )
    except UnsupportedError as exc:
        result.error = f"unsupported: {exc}"
        return result
    except (SimError, ValueError) as exc:
        result.error = str(exc)
        return result
    result.settled = pred.settled
    result.settle_ns = pred.last_change_ns if pred.settled else None
    result.total_ns = pred.now_ns
    result.batches = pred.batches
    result.passes = pred.full_scans
    result.general_profit = pred.general_profit
    result.pages_shared = pred.pages_shared
    result.pages_sharing = pred.pages_sharing
    result.ksm_zero_pages = pred.ksm_zero_pages
    result.pages_scanned = pred.pages_scanned
    result.pages_skipped = pred.pages_skipped
    result.first_pass_pages = pred.first_pass_pages
    result.later_pass_pages = pred.later_pass_pages
    result.cpu_ns = pred.cpu_ns
    return result


# ------------------------------------------------------------------------------ a run
#: what :meth:`_Driver.settle` injects: one more pass of ksmd
_SCAN_ONE_PASS = Step(index=0, op="scan", passes=1, raw={"op": "scan", "passes": 1})


class _Driver:
    """Feeds a :class:`Stepper` batch by batch, keeping the sweep's accounts (CPU, time)."""

    def __init__(self, stepper: Stepper, costs: CpuCosts) -> None:
        self.stepper = stepper
        self.k = stepper.kernel
        self.costs = costs
        self.clock = BatchClock(self.k, costs)
        self.time = self.clock.time
        self.last_change_ns = 0
        self.passes = 0

    def watched(self) -> tuple[int, ...]:
        return tuple(int(getattr(self.k, name)) for name in SETTLE_COUNTERS)

    def story(self) -> None:
        """The scenario's steps; a knob write the kernel refuses is passed over (as the
        replayer records it and goes on), any other failed op ends the run."""
        st = self.stepper
        while st.in_scenario:
            step = st.upcoming
            if step is not None and step.op == "scan":
                self.scan(Next("batch"))
                continue
            out = st.feed(Next("batch"))
            if out is not None and out.error is not None and not isinstance(out.error, KnobError):
                raise out.error

    def scan(self, start: Action) -> int:
        """A ``scan`` that ``start`` begins, batch by batch to its end; the passes completed."""
        k = self.k
        if k.knobs["pages_to_scan"] == 0:
            raise SimError("pages_to_scan=0: ksmd makes no progress")
        seq0 = k.seqnr
        self.batch(start)
        while self.stepper.scanning:
            self.batch(Next("batch"))
        return k.seqnr - seq0

    def batch(self, action: Action) -> None:
        """Feed an action that runs one ksmd batch, and account for the batch.

        A batch with no mm registered (and no pass in progress) does nothing and is not
        counted; the stepper ends the scan.
        """
        k = self.k
        if not k.can_scan:
            self.stepper.feed(action)
            return
        if self.time.batches >= MAX_BATCHES:
            raise SimError(f"more than {MAX_BATCHES} batches")
        before = self.watched()
        seq0 = k.seqnr
        self.clock.before()
        out = self.stepper.feed(action)
        assert out is not None
        self.clock.after(int(out.what["scanned"]))
        if k.seqnr != seq0:
            self.passes += 1
        if self.watched() != before:
            self.last_change_ns = self.time.now_ns

    def settle(self, max_passes: int) -> bool:
        """Keep ksmd running until a full pass changes none of :data:`SETTLE_COUNTERS`."""
        for _ in range(max_passes):
            before = self.watched()
            if self.scan(Inject(_SCAN_ONE_PASS)) == 0:
                return True  # nothing registered: nothing will ever change
            if self.watched() == before:
                return True
        return False


def _knob_values(k: Kernel) -> dict[str, int | None]:
    return {name: (int(k.knobs[name]) if name in k.knobs else None) for name in SWEEP_KNOBS}


def run_point(
    point: SweepPoint,
    costs: CpuCosts | None = None,
    max_passes: int = DEFAULT_MAX_PASSES,
    scenario: Source | None = None,
) -> SweepResult:
    """Run one grid point (see the module docstring for the definitions)."""
    if isinstance(scenario, CaptureSource):
        return run_capture_point(point, scenario, costs)
    costs = costs or CpuCosts()
    result = SweepResult(point.preset, point.kernel)
    try:
        if scenario is None:
            scenario = load_preset(point.preset)
        scenario = scenario.with_kernel(point.kernel)
        check_supported(scenario, point.kernel)
        sysfs: dict[str, Any] = dict(scenario.sysfs)
        sysfs.update(point.knobs)
        k = Kernel(point.kernel, sysfs, record=True)
        result.knobs = _knob_values(k)
        until = scenario.raw.get("sweep_until")
        steps = scenario.steps
        for i, step in enumerate(steps):
            if step.op == "checkpoint" and until is not None and step.name == until:
                steps = steps[:i]
                break
        drive = _Driver(Stepper(k, steps), costs)
        drive.story()
        result.settled = drive.settle(max_passes)
    except UnsupportedError as exc:
        result.error = f"unsupported: {exc}"
        return result
    except (SimError, ValueError) as exc:
        result.error = str(exc)
        return result
    counters = k.global_counters()
    profit = counters["general_profit"]
    if profit is None:  # 6.1 has no general_profit: the 6.5 formula
        profit = k.pages_sharing * PAGE_SIZE - k.ksm_rmap_items * RMAP_ITEM_SIZE
    result.settle_ns = drive.last_change_ns if result.settled else None
    result.total_ns = drive.time.now_ns
    result.batches = drive.time.batches
    result.passes = drive.passes
    result.general_profit = int(profit)
    result.pages_shared = k.pages_shared
    result.pages_sharing = k.pages_sharing
    result.ksm_zero_pages = int(counters["ksm_zero_pages"] or 0)
    result.pages_scanned = k.pages_scanned
    result.pages_skipped = k.pages_skipped
    result.first_pass_pages = drive.time.first
    result.later_pass_pages = drive.time.not_first
    result.cpu_ns = drive.time.cpu_ns
    return result


#: a unit of work for a runner: (index in the grid, point, its scenario or None to load the
#: preset by name, CPU costs, max passes)
Work = tuple[int, SweepPoint, Source | None, CpuCosts, int]
#: what a runner yields for each run as it finishes: (index, result, code fingerprint of the
#: process that computed it)
Done = tuple[int, SweepResult, str]
#: a runner: takes the work, yields each run as it finishes (in any order)
Runner = Callable[[Sequence[Work]], Iterator[Done]]


def run_work(item: Work) -> Done:
    """Run one unit of work (in whatever process or Dask worker runs it)."""
    index, point, scenario, costs, max_passes = item
    return index, run_point(point, costs, max_passes, scenario), code_fingerprint()


def serial_runner(work: Sequence[Work]) -> Iterator[Done]:
    """Every run in this process, one after the other."""
    for item in work:
        yield run_work(item)


def pool_runner(jobs: int) -> Runner:
    """The embedded default: a local process pool of ``jobs`` processes."""

    def run(work: Sequence[Work]) -> Iterator[Done]:
        if jobs <= 1 or len(work) <= 1:
            yield from serial_runner(work)
            return
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(work)))
        try:
            futures = [pool.submit(run_work, item) for item in work]
            for fut in as_completed(futures):
                try:
                    done = fut.result()
                except BrokenProcessPool as exc:  # a worker process was killed
                    raise RunnerError(f"a process of the pool died: {exc}") from exc
                yield done
        finally:  # also when the caller stops early: queued runs are dropped
            pool.shutdown(wait=True, cancel_futures=True)

    return run


@functools.cache
def code_fingerprint() -> str:
    """A hash of the code a run's result depends on: every module of ``sim`` and this one.

    It keys the results kept for resuming (a sweep after an upgrade recomputes rather than
    reuse numbers an older simulator produced) and tells whether a Dask worker runs the
    same code as the process that asked.
    """
    digest = hashlib.sha256()
    sim_dir = Path(sim.__file__).parent
    files = sorted(sim_dir.rglob("*.py")) + [Path(__file__), Path(_predict.__file__)]
    for path in files:
        name = path.relative_to(sim_dir).as_posix() if path.is_relative_to(sim_dir) else path.stem
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def point_key(point: SweepPoint, scenario: Source | None, costs: CpuCosts, max_passes: int) -> str:
    """What identifies a run's result: the code, the scenario's content (not only the
    preset's name), the kernel, the knobs, the CPU costs and ``max_passes``."""
    doc = {
        "code": code_fingerprint(),
        "preset": point.preset,
        "scenario": None
        if scenario is None
        else scenario.key_doc()
        if isinstance(scenario, CaptureSource)
        else scenario.raw,
        "kernel": point.kernel,
        "knobs": [list(kv) for kv in point.knobs],
        "costs": asdict(costs),
        "max_passes": max_passes,
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class ResultSink(Protocol):
    """Where finished runs are kept (:class:`app.whatif.store.ResultStore`)."""

    def get_many(self, keys: Sequence[str]) -> dict[str, SweepResult]: ...

    def put(self, key: str, point: SweepPoint, result: SweepResult) -> None: ...


class RunnerError(RuntimeError):
    """The runs cannot go on (a pool process killed, the Dask scheduler lost...); the runs
    already finished are kept in the store."""


class CodeMismatchError(RuntimeError):
    """A run came back from a process running other code than this one."""


def _scenario(name: str) -> Scenario | None:
    try:
        return load_preset(name)
    except (SimError, ValueError, OSError):
        return None  # run_point loads it again and reports the error in the row


def run_sweep(
    points: Sequence[SweepPoint],
    costs: CpuCosts | None = None,
    jobs: int | None = None,
    max_passes: int = DEFAULT_MAX_PASSES,
    progress: Callable[[int, int], None] | None = None,
    store: ResultSink | None = None,
    runner: Runner | None = None,
    sources: dict[str, Source] | None = None,
) -> list[SweepResult]:
    """Run every point; results in point order.

    ``runner`` runs the work (default: a local pool of ``jobs`` processes, all cores if
    None). With a ``store``, runs it already holds are not run again, and each run is put
    in it as soon as it finishes (so a sweep killed halfway resumes where it stopped).
    ``progress(done, total)`` is called once at the start and after each run.
    ``sources`` gives the scenario (or :class:`CaptureSource`) of a point's ``preset``
    name instead of the preset library's.
    """
    costs = costs or CpuCosts()
    runner = runner or pool_runner(jobs or os.cpu_count() or 1)
    total = len(points)
    given = sources or {}
    scenarios: dict[str, Source | None] = {
        name: given[name] if name in given else _scenario(name)
        for name in dict.fromkeys(p.preset for p in points)
    }
    keys = [point_key(p, scenarios[p.preset], costs, max_passes) for p in points]
    known = store.get_many(keys) if store is not None else {}
    results: list[SweepResult | None] = [known.get(key) for key in keys]
    work = [
        (i, p, scenarios[p.preset], costs, max_passes)
        for i, p in enumerate(points)
        if results[i] is None
    ]
    done = total - len(work)
    if progress:
        progress(done, total)
    mine = code_fingerprint()
    for i, res, code in runner(work):
        if code != mine:
            raise CodeMismatchError(
                "a worker runs other ksmlab code than this process (install the same "
                "version on every worker)"
            )
        results[i] = res
        if store is not None:
            store.put(keys[i], points[i], res)
        done += 1
        if progress:
            progress(done, total)
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"{len(missing)} runs never came back")
    return [r for r in results if r is not None]


# ------------------------------------------------------------------------------ output
def _ms(ns: int | None) -> str:
    if ns is None:
        return ""
    return f"{ns // 1_000_000}.{ns % 1_000_000:06d}"


def _pct(part: int, whole: int) -> str:
    """``part / whole`` in percent with 3 decimals, from integers (exact, reproducible)."""
    if whole <= 0:
        return ""
    milli = part * 100_000 // whole
    return f"{milli // 1000}.{milli % 1000:03d}"


def cpu_share(r: SweepResult) -> float | None:
    """ksmd's modelled CPU share over the run (CPU / (CPU + sleeps)), in percent."""
    return None if r.total_ns <= 0 else 100.0 * r.cpu_ns / r.total_ns


def result_row(r: SweepResult) -> dict[str, str]:
    """One CSV row (every value a string; times in ms with 6 decimals, exact)."""
    row: dict[str, str] = {"preset": r.preset, "kernel": r.kernel}
    for knob in SWEEP_KNOBS:
        v = r.knobs.get(knob)
        row[knob] = "" if v is None else str(v)
    row.update(
        settled="1" if r.settled else "0",
        settle_ms=_ms(r.settle_ns),
        total_ms=_ms(r.total_ns),
        cpu_ms=_ms(r.cpu_ns),
        cpu_share_pct=_pct(r.cpu_ns, r.total_ns),
        error=r.error,
    )
    for name in COUNT_COLUMNS:
        row[name] = str(getattr(r, name))
    return {col: row[col] for col in CSV_COLUMNS}


def results_csv(results: Iterable[SweepResult]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in results:
        writer.writerow(result_row(r))
    return buf.getvalue()


def result_dict(r: SweepResult) -> dict[str, Any]:
    return asdict(r)
