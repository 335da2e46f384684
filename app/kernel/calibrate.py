"""``ksmlab calibrate``: measure ksmd's CPU costs on this machine's kernel (root).

Fills a :class:`sim.timemodel.CpuCosts` with figures measured on the real ksmd, for the
what-if sweep and prediction (``--calibration FILE``). Method (``docs/cpu-model.md``):

- ksmd runs exactly one pass at a time: ``run=1``, a new ``sleep_millisecs`` value (which
  wakes it), wait for ``full_scans`` to grow, ``run=0``; ``pages_to_scan`` is larger than
  the area, so one pass is one batch. The pass's CPU is the growth of ksmd's run time
  (``/proc/<ksmd>/schedstat``, nanoseconds; ``/proc/<ksmd>/stat`` ticks as a fallback).
- **pass**: 20 passes over a tiny area (16 unique pages): CPU per pass, less the pages.
- **first**, **later**, **skip**: a *unique* area (:class:`app.kernel.workloads.Area`);
  pass 1 creates every rmap_item, passes 2-4 look at every page again, pass 5 skips all
  (smart scan). Per page: (CPU - pass) / pages.
- **merge**, **ksm**: a *pairs* area (page i = page i + N/2): pass 1 first visits, pass 2
  inserts N/2 pages in the unstable tree (later) and merges N/2 (merge), pass 3 revisits N
  KSM pages (ksm).
- **stable**: a *quads* area (pages i, i + N/4, i + N/2, i + 3N/4 equal): pass 2 inserts
  N/4 pages (later), merges N/4 with them into new KSM pages (merge) and N/2 into those
  KSM pages (stable): (CPU - pass - N/4 later - N/4 merge) / (N/2).
- **wake** (wall time, not CPU): one page per batch, ``sleep_millisecs=20``, for 3 s: the
  wall time per batch less its CPU and the sleep (jiffy rounding, scheduling delay).
- **zero**: a zero-filled area with ``use_zero_pages=1``: pass 2 merges every page with the
  zero page.
- **thp_first**, **thp_later**: the unique area again, mapped by transparent huge pages
  (``MADV_HUGEPAGE``; one PMD entry for 512 pages: a shorter walk, a warm TLB): pass 1,
  passes 2-4; left out (None: charged as first / later) when the kernel gives no THP.
- **batch**: CPU of a batch beyond its pages (waking, caches cold after the sleep): a unique
  area of :data:`BATCH_AREA` pages revisited with smart scan off, once as one batch per pass
  (its CPU per page), then :data:`BATCH_PAGES` pages a batch with ``sleep_millisecs=20`` for
  :data:`WAKE_SECONDS`: (CPU - pages x that per page - passes x pass) / batches.
- **file**: a file of N pages (under ``/var/tmp``) mapped privately (:class:`FileArea`),
  every page read so that its PTE maps the page-cache page, one page written (copy on
  write: the VMA gets its anon_vma and one anonymous page), ``MADV_MERGEABLE``, smart scan
  off: after the first visit, each pass walks N - 1 page-cache pages and hands one page to
  ``cmp_and_merge_page``. Per page: (CPU - pass - later) / (N - 1). The same mapping
  without the write (no anon_vma: ksmd skips the whole VMA) is measured too, as
  ``file_noanon_ns`` in the rounds (expected near 0: it checks that rule).

Each round holds the host lock (:func:`app.kernel.guard.host_lock`, shared with the
replayer) only for its own measurement; every knob is saved first (:class:`KnobGuard`, with
its state file) and restored in a ``finally`` after a ``run=2``; ``run`` ends at 0. It refuses
when ksmd is running or another process has mergeable memory (``force`` skips the latter).
"""

from __future__ import annotations

import mmap
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.timemodel import CpuCosts, calibration_doc

from .guard import KnobGuard, Refusal, check_privileges, host_lock, lock_file_path, state_file_path
from .sysfs import KsmSysfs
from .workloads import MADV_MERGEABLE, MADV_NOHUGEPAGE, PAGE, Area

PASS_TIMEOUT_S = 120.0
TINY = 16


def ksmd_pid() -> int:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "ksmd":
                return int(comm.parent.name)
        except (OSError, ValueError):
            continue
    raise Refusal("no ksmd kernel thread found")


def ksmd_cpu_ns(pid: int) -> int:
    """Nanoseconds ksmd has spent on a CPU (task_sched_runtime, as the advisor reads it)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def mergeable_pids(exclude: int | None = None) -> list[int]:
    """Processes with mergeable memory or merge-any (ksm_stat says so)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/ksm_stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "ksm_mergeable: yes" in text or "ksm_merge_any: yes" in text:
            pids.append(int(stat.parent.name))
    return [p for p in pids if p != exclude]


@dataclass(frozen=True)
class Pass:
    scanned: int
    skipped: int
    cpu_ns: int
    wall_ns: int


class OnePass:
    """Runs ksmd for exactly one full pass at a time and measures it."""

    def __init__(self, sysfs: KsmSysfs, pid: int) -> None:
        self.s = sysfs
        self.pid = pid
        self.sleep = 60_000

    def _int(self, name: str) -> int:
        return self.s.read_int(name) or 0

    def __call__(self) -> Pass:
        before = (self._int("full_scans"), self._int("pages_scanned"), self._int("pages_skipped"))
        cpu0 = ksmd_cpu_ns(self.pid)
        t0 = time.monotonic_ns()
        self.s.write("run", 1)
        self.sleep = 60_001 if self.sleep == 60_000 else 60_000
        self.s.write("sleep_millisecs", self.sleep)  # a new value wakes ksmd
        deadline = time.monotonic() + PASS_TIMEOUT_S
        try:
            while self._int("full_scans") == before[0]:
                if time.monotonic() > deadline:
                    raise RuntimeError("a ksmd pass took longer than 120 s")
                time.sleep(0.001)
        finally:
            self.s.write("run", 0)
        wall = time.monotonic_ns() - t0
        time.sleep(0.03)  # let ksmd go back to sleep before reading its CPU time
        return Pass(
            self._int("pages_scanned") - before[1],
            self._int("pages_skipped") - before[2],
            ksmd_cpu_ns(self.pid) - cpu0,
            wall,
        )


class FileArea:
    """``pages`` pages of a new file under ``directory``, mapped privately by this process
    (the file is unlinked at once), every page read (its PTE maps the page-cache page),
    ``MADV_MERGEABLE``; with ``cow`` the first page is written (copied on write: the VMA
    gets an anon_vma and one anonymous page)."""

    def __init__(self, pages: int, cow: bool, directory: str = "/var/tmp") -> None:
        fd, path = tempfile.mkstemp(prefix="ksmlab-calibrate-", dir=directory)
        try:
            stamp = (os.getpid() << 40) | (time.monotonic_ns() & ((1 << 40) - 1))
            block = 256
            for lo in range(0, pages, block):
                os.write(
                    fd,
                    b"".join(
                        (stamp + i).to_bytes(8, "little") * (PAGE // 8)
                        for i in range(lo, min(pages, lo + block))
                    ),
                )
            self.map = mmap.mmap(
                fd,
                pages * PAGE,
                flags=mmap.MAP_PRIVATE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
        finally:
            os.close(fd)
            os.unlink(path)
        self.pages = pages
        self.map.madvise(MADV_NOHUGEPAGE)
        total = 0
        for i in range(pages):  # read faults: page-cache pages mapped (fault-around helps)
            total += self.map[i * PAGE]
        if cow:
            self.map[0] = (self.map[0] + 1) & 0xFF
        self.map.madvise(MADV_MERGEABLE)

    def close(self) -> None:
        if not self.map.closed:
            self.map.close()

    def __enter__(self) -> FileArea:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


WAKE_SLEEP_MS = 20
WAKE_SECONDS = 3.0
BATCH_AREA = 4000
BATCH_PAGES = 10


@dataclass(frozen=True)
class Run:
    """What ksmd did over a timed run: pages scanned, full scans, its CPU, the wall time."""

    scanned: int
    passes: int
    cpu_ns: int
    wall_ns: int


def timed_run(s: KsmSysfs, pid: int, seconds: float, pages_per_batch: int) -> tuple[Run, int]:
    """ksmd running for ``seconds`` with ``pages_per_batch`` pages a batch (the caller set
    ``sleep_millisecs``): what it did, and its batches (pages over pages_per_batch, rounded
    up, plus one per pass end). Raises RuntimeError below 10 batches."""
    pts = s.read_int("pages_to_scan") or 0
    s.write("pages_to_scan", pages_per_batch)
    p0, f0, c0 = s.read_int("pages_scanned") or 0, s.read_int("full_scans") or 0, ksmd_cpu_ns(pid)
    t0 = time.monotonic_ns()
    s.write("run", 1)
    try:
        time.sleep(seconds)
    finally:
        s.write("run", 0)
    wall = time.monotonic_ns() - t0
    time.sleep(0.03)  # let ksmd go back to sleep before reading its CPU time
    run = Run(
        (s.read_int("pages_scanned") or 0) - p0,
        (s.read_int("full_scans") or 0) - f0,
        ksmd_cpu_ns(pid) - c0,
        wall,
    )
    s.write("pages_to_scan", pts)
    batches = -(-run.scanned // pages_per_batch) + run.passes
    if batches < 10:
        raise RuntimeError(f"only {batches} ksmd batches in {seconds} s")
    return run, batches


def batch_wake_ns(s: KsmSysfs, pid: int, sleep_ms: int, seconds: float) -> float:
    """Run ksmd with one page per batch for ``seconds``: the wall time of a batch minus its
    CPU and ``sleep_ms`` (batches: pages scanned plus passes, a pass end's batch scans none)."""
    s.write("sleep_millisecs", sleep_ms)
    run, batches = timed_run(s, pid, seconds, 1)
    return (run.wall_ns - run.cpu_ns) / batches - sleep_ms * 1_000_000


def batch_overhead_ns(s: KsmSysfs, one: OnePass, pass_ns: float, seconds: float) -> float:
    """CPU per batch beyond its pages, on a unique area already visited (see the module doc;
    the caller set smart_scan=0 and a pages_to_scan above the area)."""
    whole = one()  # the area as one batch: warm caches, the pages' own cost
    per_page = (whole.cpu_ns - pass_ns) / max(1, whole.scanned)
    s.write("sleep_millisecs", WAKE_SLEEP_MS)
    run, batches = timed_run(s, one.pid, seconds, BATCH_PAGES)
    return (run.cpu_ns - run.scanned * per_page - run.passes * pass_ns) / batches


def anon_huge_kb() -> int:
    """This process's anonymous memory in transparent huge pages (smaps_rollup), in kB."""
    with open(f"/proc/{os.getpid()}/smaps_rollup", encoding="ascii") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return 0


def _fresh(s: KsmSysfs, **knobs: int) -> None:
    """Unmerge everything, then set knobs (ksmd stopped)."""
    s.write("run", 2)
    s.write("run", 0)
    for name, value in knobs.items():
        if s.exists(name) and s.read(name) != value:
            s.write(name, value)


def measure_round(s: KsmSysfs, pages: int, log: Callable[[str], None]) -> dict[str, float]:
    """One round of every measurement (the caller holds the lock and saved the knobs)."""
    one = OnePass(s, ksmd_pid())
    base = {"pages_to_scan": max(pages * 2, 1000), "smart_scan": 1, "use_zero_pages": 0}
    if s.exists("advisor_mode") and s.read("advisor_mode") != "none":
        s.write("advisor_mode", "none")
    out: dict[str, float] = {}
    # per pass: a tiny area, smart scan off (every page handed over every pass)
    _fresh(s, **{**base, "smart_scan": 0})
    with Area(TINY, "unique"):
        one()  # first visits
        runs = [one() for _ in range(20)]
    pass_ns = statistics.median(r.cpu_ns for r in runs)
    out["pass_ns"] = pass_ns
    log(f"  pass overhead {pass_ns / 1000:.1f} us")
    # wall time per batch beyond CPU and sleep: one page per batch, default sleep
    _fresh(s, **{**base, "smart_scan": 0, "pages_to_scan": 1})
    with Area(TINY, "unique"):
        out["wake_ns"] = batch_wake_ns(s, ksmd_pid(), WAKE_SLEEP_MS, WAKE_SECONDS)
    s.write("pages_to_scan", base["pages_to_scan"])
    # unique pages
    _fresh(s, **base)
    with Area(pages, "unique"):
        runs = [one() for _ in range(5)]
    if any(r.scanned < pages for r in runs[:4]) or runs[4].skipped < pages:
        raise RuntimeError(f"unexpected pass sizes on the unique area: {runs}")
    out["first_ns"] = (runs[0].cpu_ns - pass_ns) / runs[0].scanned
    later = runs[1:4]
    out["later_ns"] = sum(r.cpu_ns - pass_ns for r in later) / sum(r.scanned for r in later)
    out["skip_ns"] = (runs[4].cpu_ns - pass_ns) / runs[4].skipped
    out["wall_per_cpu"] = sum(r.wall_ns for r in runs) / max(1, sum(r.cpu_ns for r in runs))
    # the same unique pages mapped by transparent huge pages (when the kernel gives them)
    _fresh(s, **base)
    with Area(pages, "unique", huge=True):
        huge_kb = anon_huge_kb()
        runs = [one() for _ in range(4)]
    if huge_kb * 1024 >= pages * 4096 // 2 and all(r.scanned >= pages for r in runs):
        out["thp_first_ns"] = (runs[0].cpu_ns - pass_ns) / runs[0].scanned
        out["thp_later_ns"] = sum(r.cpu_ns - pass_ns for r in runs[1:]) / sum(
            r.scanned for r in runs[1:]
        )
    else:
        log(f"  no transparent huge pages ({huge_kb} kB): THP visits cost as others")
    # CPU per batch beyond its pages
    _fresh(s, **{**base, "smart_scan": 0})
    with Area(BATCH_AREA, "unique"):
        one()  # first visits
        out["batch_ns"] = batch_overhead_ns(s, one, pass_ns, WAKE_SECONDS)
    # identical pairs: merges, then KSM revisits
    _fresh(s, **base)
    with Area(pages, "pairs"):
        one()  # first visits
        p2, p3 = one(), one()
        sharing = s.read_int("pages_sharing") or 0
    half = pages // 2
    if sharing < half * 0.95:
        raise RuntimeError(f"only {sharing} of {half} pairs merged")
    out["merge_ns"] = (p2.cpu_ns - pass_ns - half * out["later_ns"]) / half
    out["ksm_ns"] = (p3.cpu_ns - pass_ns) / p3.scanned
    # identical fours: a quarter inserted, a quarter merged in pairs, half into KSM pages
    _fresh(s, **base)
    with Area(pages, "quads"):
        one()  # first visits
        q2 = one()
        sharing = s.read_int("pages_sharing") or 0
    quarter = pages // 4
    if sharing < 3 * quarter * 0.95:
        raise RuntimeError(f"only {sharing} of {3 * quarter} pages of fours merged")
    out["stable_ns"] = (q2.cpu_ns - pass_ns - quarter * (out["later_ns"] + out["merge_ns"])) / (
        pages - 2 * quarter
    )
    # zero-filled pages
    _fresh(s, **{**base, "use_zero_pages": 1})
    with Area(pages, "zero"):
        one()  # first visits
        z2 = one()
        zeros = s.read_int("ksm_zero_pages") or 0
    if zeros < pages * 0.95:
        raise RuntimeError(f"only {zeros} of {pages} zero pages merged")
    out["zero_ns"] = (z2.cpu_ns - pass_ns) / z2.scanned
    # page-cache pages of a private file mapping with an anon_vma: walked, skipped
    _fresh(s, **{**base, "smart_scan": 0})
    with FileArea(pages, cow=True):
        one()  # the anonymous page's first visit
        runs = [one() for _ in range(3)]
    if any(r.scanned != 1 for r in runs):
        raise RuntimeError(f"unexpected pass sizes on the file area: {runs}")
    walk = statistics.median(r.cpu_ns for r in runs)
    out["file_ns"] = (walk - pass_ns - out["later_ns"]) / (pages - 1)
    # the same mapping never written: no anon_vma, so ksmd should skip the whole VMA
    _fresh(s, **{**base, "smart_scan": 0})
    with FileArea(pages, cow=False):
        runs = [one() for _ in range(3)]
    out["file_noanon_ns"] = (statistics.median(r.cpu_ns for r in runs) - pass_ns) / pages
    log(
        "  per page (ns): "
        + ", ".join(f"{k[:-3]} {v:.0f}" for k, v in out.items() if k.endswith("_ns"))
    )
    return out


def calibrate(
    *,
    pages: int = 20_000,
    rounds: int = 3,
    force: bool = False,
    sysfs_root: str | Path = "/sys/kernel/mm/ksm",
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Measure ``rounds`` rounds; returns the calibration document (median per cost)."""
    s = KsmSysfs(sysfs_root)
    check_privileges(s)
    results = []
    for i in range(rounds):
        log(f"round {i + 1}/{rounds}")
        with host_lock(lock_file_path(), timeout=600, on_wait=log):
            if s.read("run") != 0:
                raise Refusal("ksmd is running (run != 0): someone uses KSM; not touching it")
            others = mergeable_pids(os.getpid())
            if others and not force:
                raise Refusal(f"processes {others[:8]} have mergeable memory (use --force)")
            guard = KnobGuard(s, state_file_path())
            guard.save()
            try:
                results.append(measure_round(s, pages, log))
            finally:
                problems = guard.restore()
                if s.read("run") != 0:
                    s.write("run", 0)
                if problems:
                    raise RuntimeError(f"knobs not restored: {problems}")
    keys = {k for r in results for k in r}
    med = {k: statistics.median(r[k] for r in results if k in r) for k in keys}

    def thp(name: str) -> int | None:
        # only when every round had transparent huge pages
        return max(0, round(med[name])) if all(name in r for r in results) else None

    costs = CpuCosts(
        first_ns=max(0, round(med["first_ns"])),
        later_ns=max(0, round(med["later_ns"])),
        skip_ns=max(0, round(med["skip_ns"])),
        merge_ns=max(0, round(med["merge_ns"])),
        stable_ns=max(0, round(med["stable_ns"])),
        zero_ns=max(0, round(med["zero_ns"])),
        ksm_ns=max(0, round(med["ksm_ns"])),
        pass_ns=max(0, round(med["pass_ns"])),
        wake_ns=max(0, round(med["wake_ns"])),
        batch_ns=max(0, round(med["batch_ns"])),
        file_ns=max(0, round(med["file_ns"])),
        thp_first_ns=thp("thp_first_ns"),
        thp_later_ns=thp("thp_later_ns"),
    )
    return calibration_doc(
        costs,
        kernel=os.uname().release,
        cpus=os.cpu_count(),
        pages=pages,
        rounds=[{k: round(v, 3) for k, v in r.items()} for r in results],
        wall_per_cpu=round(med["wall_per_cpu"], 3),
        load=[round(x, 2) for x in os.getloadavg()],
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
