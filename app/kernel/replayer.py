"""Replay a ``ksm-scenario/1`` on the real kernel and record a ``ksm-trace/1`` trace.

Conventions (``shared/scenario-format.md``, ``shared/traces/README.md``, ``ksm-model.md``
§3.3 and §11):

* every run starts from a clean KSM state (``run=2`` then ``run=0``: no rmap_items, no
  stable nodes, ``full_scans`` 0) with the format's default knobs plus the scenario's
  ``sysfs``; knobs this kernel lacks are skipped (``meta.skipped_knobs``);
* one worker process per scenario process (:mod:`.worker`); ksmd is stopped (``run=0``)
  during every step but ``scan``;
* ``scan N`` runs exactly N full passes: ``pages_to_scan`` is set so large that one batch is
  one whole pass, and ``sleep_millisecs`` to an hour, so ksmd sleeps after every pass until
  the replayer *changes* ``sleep_millisecs`` (which wakes it for exactly one more pass, once
  ``/proc/<ksmd>/stat`` shows it asleep); then ``run=0`` and both knobs are put back. With
  no registered process no pass ever completes: the replayer gives up once ksmd has slept
  for ``stall_seconds`` without progress and records the real counter. (If the ksmd thread
  cannot be found, a plain ``sleep_millisecs`` of ``scan_sleep_ms`` and polling is used.)
* a checkpoint records the global counters (``full_scans``, ``pages_scanned``,
  ``pages_skipped`` as the increase since the start, ``full_scans`` since the last
  ``run=2``), ``/proc/PID/ksm_stat`` of every live process in creation order
  (``/proc/PID/ksm_merging_pages`` before 6.4; missing fields null) and one token per page
  of every live mapping from ``/proc/PID/pagemap`` + ``/proc/kpageflags``; where
  ``KPF_KSM`` is unreliable (6.10-era kernels such as 6.12: set on every anonymous page, as
  a probe at start shows) a page is ``K`` when anonymous and ``PG_dirty``, and every
  mapping's ``K`` count is checked against smaps ``KSM:`` (``meta.warnings``).

Host safety is :mod:`.guard`'s: knobs saved before the first write and restored on every
way out (including SIGTERM/SIGINT/SIGHUP), workers killed, one replay at a time (a lock).

Run it with only the standard library: ``python3 -m app.kernel.replayer SCENARIO.json
--trace OUT.json`` (the same options as ``ksmlab replay``). Exit statuses: 0 trace
written, 1 the trace differs from ``--expect``, 2 refusal or bad input, 3 the replay failed,
4 the scenario uses an operation this kernel lacks (prctl before 6.4), no trace written.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from sim.errors import ScenarioError
from sim.scenario import Scenario, Step, load_scenario

from . import libc
from .guard import (
    KnobGuard,
    Refusal,
    check_privileges,
    host_lock,
    lock_file_path,
    restore_from_state_file,
    state_file_path,
)
from .procfs import (
    KPF_ANON,
    KPF_ANON_EXCLUSIVE,
    KPF_DIRTY,
    KPF_KSM,
    KPF_ZERO_PAGE,
    PM_PFN_MASK,
    PM_PRESENT,
    ProcessGone,
    ProcFs,
    SmapsVma,
    solve_ksm_frames,
)
from .sysfs import (
    COUNTERS,
    CUMULATIVE,
    DEFAULT_KNOBS,
    DEFAULT_ROOT,
    KnobValue,
    KsmSysfs,
    errno_name,
)
from .worker import PAGE, WorkerError, WorkerHandle, spawn_worker

REPLAYER = "ksmlab-replay/1"
TRACE_FORMAT = "ksm-trace/1"
SCAN_PAGES = 1_000_000_000  # pages_to_scan during a scan: a batch always ends with its pass
WAKE_SLEEP_MS = (3_600_000, 3_600_001, 3_600_002, 3_600_003)  # an hour between passes
NUDGE_SECONDS = 0.05  # ksmd asleep this long after a wake-up without a pass: wake it again
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
THP_DIR = "/sys/kernel/mm/transparent_hugepage"
EXPECTED_FILES = tuple(sorted(set(COUNTERS) | set(DEFAULT_KNOBS) | {"advisor_mode"}))

EXIT_OK, EXIT_DIFFER, EXIT_REFUSED, EXIT_FAILED, EXIT_UNSUPPORTED = 0, 1, 2, 3, 4


class Unsupported(Exception):
    """The scenario uses an operation this kernel does not have (exit status 4)."""


class ReplayFailed(Exception):
    """The replay could not be carried out (exit status 3)."""


class Interrupted(BaseException):
    """SIGTERM, SIGINT or SIGHUP arrived; raised so that every ``finally`` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


@dataclass
class ReplayConfig:
    sysfs_root: str | Path = DEFAULT_ROOT
    proc_root: str | Path = "/proc"
    state_file: Path = field(default_factory=state_file_path)
    lock_file: Path = field(default_factory=lock_file_path)
    force: bool = False
    lock_timeout: float | None = None  # None: wait for another replay as long as it takes
    scan_sleep_ms: int = 100  # only when ksmd's thread cannot be found
    stall_seconds: float = 0.25  # ksmd asleep this long after a wake-up: nothing to scan
    log: Callable[[str], None] | None = None


def scenario_needs_prctl(scenario: Scenario) -> Step | None:
    return next((s for s in scenario.steps if s.op == "prctl"), None)


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


# --------------------------------------------------------------------------------------
# the session: lock, refusals, saved knobs, signals, probes


class KernelSession:
    """Exclusive use of the host's KSM for one or more replays (a context manager)."""

    def __init__(self, config: ReplayConfig | None = None) -> None:
        self.config = config or ReplayConfig()
        self.sysfs = KsmSysfs(self.config.sysfs_root)
        self.proc = ProcFs(self.config.proc_root)
        self.guard = KnobGuard(self.sysfs, self.config.state_file)
        self.workers: dict[int, WorkerHandle] = {}
        self.warnings: list[str] = []
        self.restore_problems: dict[str, str] = {}
        self.isolation: dict[str, Any] = {}
        self.features: dict[str, Any] = {}
        self.classification: dict[str, Any] = {}
        self.ksmd: int | None = None
        self.last_sleep: KnobValue | None = None  # the last sleep_millisecs a scan wrote
        self.thp_off = False
        self._lock: Any = None
        self._old_handlers: dict[int, Any] = {}
        self._open = False

    # -- lifecycle

    def __enter__(self) -> KernelSession:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _say(self, line: str) -> None:
        if self.config.log is not None:
            self.config.log(line)

    def open(self) -> None:
        check_privileges(self.sysfs)
        self._lock = host_lock(self.config.lock_file, self.config.lock_timeout, self._say)
        self._lock.__enter__()
        try:
            if threading.current_thread() is threading.main_thread():
                for sig in SIGNALS:
                    self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            else:  # only the main thread may handle signals: the caller must clean up
                self.warnings.append("not the main thread: no SIGTERM/SIGINT/SIGHUP handlers")
            self._open = True
            found, problems = restore_from_state_file(
                self.config.state_file, self.sysfs.root, self.kill_recorded
            )
            if found:
                self.warnings.append(
                    "restored the knobs left by an interrupted replay"
                    + (f" (problems: {problems})" if problems else "")
                )
                if problems:
                    raise Refusal(
                        f"could not restore the knobs of an interrupted replay: "
                        f"{problems}; see {self.config.state_file}"
                    )
            self.check_alone()
            self.guard.save()
            libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
            self.probe()
        except BaseException:
            self.close()
            raise

    def close(self) -> dict[str, str]:
        """Kill every worker, restore every knob, release the lock (signals held off)."""
        if not self._open and self._lock is None:
            return self.restore_problems
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            self.kill_workers()
            self.restore_problems = self.guard.restore()
            try:
                libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 0)
            except OSError:
                pass
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
            self._old_handlers.clear()
            self._open = False
            if self._lock is not None:
                lock, self._lock = self._lock, None
                lock.__exit__(None, None, None)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return self.restore_problems

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    # -- checks and probes

    def check_alone(self) -> None:
        others = self.proc.ksm_users(exclude=[os.getpid(), *self.workers])
        self.isolation = {"alone": not others, "other_ksm_processes": others}
        if others and not self.config.force:
            names = ", ".join(f"pid {u['pid']} ({u['comm']})" for u in others[:5])
            more = f" and {len(others) - 5} more" if len(others) > 5 else ""
            raise Refusal(f"another process uses KSM: {names}{more} (--force to replay anyway)")

    def probe(self) -> None:
        names = set(self.sysfs.names())
        enabled = KsmSysfs(THP_DIR).read("enabled")  # "[madvise]" -> "madvise"
        thp = "never" if enabled is None else str(enabled)
        self.thp_off = thp != "never"
        stat = self.proc.ksm_stat(os.getpid())
        self.features = {
            "missing_files": [n for n in EXPECTED_FILES if n not in names],
            "ksm_stat_lines": sorted(stat) if stat is not None else [],
            "prctl_memory_merge": libc.memory_merge_supported(),
            "thp": thp,
        }
        self.ksmd = self.proc.find_kthread("ksmd")
        self.features["ksmd_pid"] = self.ksmd
        # KPF_KSM must be clear on a freshly written page of a never-mergeable mapping
        addr = libc.mmap_anon(PAGE)
        try:
            libc.write_bytes(addr, b"\x5a" * PAGE)
            entry = self.proc.pagemap(os.getpid(), addr, 1, PAGE)[0]
            flags = (
                self.proc.kpageflags([entry & PM_PFN_MASK])[entry & PM_PFN_MASK]
                if entry & PM_PRESENT
                else 0
            )
        finally:
            libc.munmap(addr, PAGE)
        reliable = not flags & (1 << KPF_KSM)
        self.classification = {
            "kpf_ksm_reliable": reliable,
            "probe_kpageflags": flags,
            "ksm_rule": "KPF_KSM" if reliable else "KPF_ANON and KPF_DIRTY (PG_dirty)",
            # the fresh page is exclusively owned: where kpageflags shows PG_anon_exclusive
            # (bit 34, 6.1-6.12), a frame with it cannot be a KSM page
            "anon_exclusive": bool(flags & (1 << KPF_ANON_EXCLUSIVE)),
        }

    # -- workers

    def spawn(self, name: str) -> WorkerHandle:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # no handler in the child
        try:
            handle = spawn_worker(name, self.thp_off, self.proc)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self.adopt(handle)
        return handle

    def adopt(self, handle: WorkerHandle) -> None:
        self.workers[handle.pid] = handle
        self._note_workers()

    def forget(self, handle: WorkerHandle) -> None:
        self.workers.pop(handle.pid, None)
        self._note_workers()

    def _note_workers(self) -> None:
        self.guard.set_workers(
            [{"pid": h.pid, "start": h.start_time or 0} for h in self.workers.values()]
        )

    def kill_workers(self) -> None:
        for handle in list(self.workers.values()):
            try:
                handle.kill()
            except (WorkerError, OSError) as exc:
                self.warnings.append(f"killing worker {handle.pid}: {exc}")
        self.workers.clear()
        self._note_workers()

    def kill_recorded(self, workers: list[dict[str, int]]) -> None:
        """Kill workers listed in a state file (pid and start time must both match)."""
        kill_recorded_workers(self.proc, workers)

    # -- replay

    def replay(self, scenario: Scenario) -> dict[str, Any]:
        if not self._open:
            raise RuntimeError("session is not open")
        step = scenario_needs_prctl(scenario)
        if step is not None and not self.features.get("prctl_memory_merge"):
            raise Unsupported(
                f"step {step.index}: prctl PR_SET_MEMORY_MERGE does not exist "
                f"on kernel {os.uname().release} (6.4+)"
            )
        return _Replay(self, scenario).run()


def kill_recorded_workers(proc: ProcFs, workers: list[dict[str, int]]) -> None:
    for w in workers:
        pid, start = int(w.get("pid", 0)), int(w.get("start", 0))
        if pid > 1 and start and proc.start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while proc.state(pid) not in (None, "Z", "X") and time.monotonic() < deadline:
                time.sleep(0.01)


# --------------------------------------------------------------------------------------
# one replay


@dataclass
class _Proc:
    name: str
    handle: WorkerHandle
    maps: dict[str, tuple[int, int]] = field(default_factory=dict)  # vma -> (addr, pages)
    merge_any: bool = False


class _Replay:
    def __init__(self, session: KernelSession, scenario: Scenario) -> None:
        self.s = session
        self.sysfs = session.sysfs
        self.proc = session.proc
        self.scenario = scenario
        self.procs: dict[str, _Proc] = {}  # live, in creation order
        self.pids: dict[str, int] = {}
        self.serial = 0
        self.base: dict[str, int | None] = {}
        self.checkpoints: list[dict[str, Any]] = []
        self.warnings: list[str] = list(session.warnings)
        session.warnings.clear()
        self.scans: list[dict[str, Any]] = []
        self.step_errors: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.proc_sources: dict[str, str] = {}
        self.smaps_checks = 0
        self.dirty_disagreements = 0
        self.dirty_rule_resolved = 0
        self.ambiguous: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}

    # -- driver

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            self.s.check_alone()
            initial = self.sysfs.counters()
            self.clean_start()
            for step in self.scenario.steps:
                self.do(step)
            others = self.proc.ksm_users(exclude=[os.getpid(), *self.s.workers])
            if others:  # started during the replay: the counters may be polluted
                self.warnings.append(
                    "another process used KSM during the replay: "
                    + ", ".join(f"pid {u['pid']} ({u['comm']})" for u in others)
                )
        finally:
            self.s.kill_workers()
        classification = dict(self.s.classification)
        if classification.get("kpf_ksm_reliable"):
            classification["dirty_rule_disagreements"] = self.dirty_disagreements
        else:
            classification["dirty_rule_resolved_by_smaps"] = self.dirty_rule_resolved
            classification["ambiguous_pages"] = self.ambiguous
        classification["smaps_checks"] = self.smaps_checks
        meta = {
            "warnings": self.warnings,
            "scans": self.scans,
            "step_errors": self.step_errors,
            "skipped_knobs": self.skipped,
            "proc_sources": self.proc_sources,
            "isolation": self.s.isolation,
            "initial_counters": initial,
            "start_counters": self.meta["start_counters"],
            "page_classification": classification,
            "kernel_features": self.s.features,
            "saved_knobs": dict(self.s.guard.saved or {}),
            "restore_problems": {},
            "pids": self.pids,
            "run_seconds": round(time.monotonic() - t0, 3),
            "replayer": REPLAYER,
            "date": _utc_now(),
            "page_size": PAGE,
            "scan_method": "wake" if self.s.ksmd else f"sleep {self.s.config.scan_sleep_ms} ms",
        }
        return {
            "format": TRACE_FORMAT,
            "scenario": self.scenario.name,
            "source": f"kernel {os.uname().release}",
            "checkpoints": self.checkpoints,
            "meta": meta,
        }

    def clean_start(self) -> None:
        s = self.sysfs
        try:
            if s.read("run") == 2:
                s.write("run", 0)
            s.write("run", 2)
            s.write("run", 0)
        except OSError as exc:
            raise ReplayFailed(f"cannot reset KSM (run=2): {errno_name(exc)}") from None
        want: dict[str, KnobValue] = {k: v for k, v in DEFAULT_KNOBS.items() if k != "run"}
        if s.exists("advisor_mode"):  # scan-time mode would forbid writing pages_to_scan
            want = {"advisor_mode": "none", **want}
        for knob, value in self.scenario.sysfs.items():
            if knob == "run":
                if value not in (0, "0"):
                    self.warnings.append(f"sysfs run={value!r} ignored: ksmd only runs in scans")
                continue
            want[knob] = value
        for knob, value in want.items():
            if not s.exists(knob):
                self.skipped.append({"knob": knob, "value": value, "step": "init"})
                continue
            if s.read(knob) == value:
                continue
            try:
                s.write(knob, value)
            except OSError as exc:
                self.step_errors.append(
                    {
                        "step": "init",
                        "op": "sysfs",
                        "knob": knob,
                        "value": value,
                        "errno": errno_name(exc),
                    }
                )
        start = s.counters()
        self.meta["start_counters"] = start
        self.base = {name: start[name] for name in CUMULATIVE}

    def do(self, step: Step) -> None:
        handler = getattr(self, f"op_{step.op}")
        try:
            handler(step)
        except WorkerError as exc:
            if exc.errno is None:
                raise ReplayFailed(f"step {step.index} ({step.op}): {exc}") from None
            self.step_errors.append(
                {
                    "step": step.index,
                    "op": step.op,
                    "proc": step.proc,
                    "errno": exc.errno,
                    "error": str(exc),
                }
            )

    # -- helpers

    def _p(self, name: str | None) -> _Proc:
        assert name is not None
        return self.procs[name]

    def _ranges(self, step: Step) -> list[tuple[int, int]] | None:
        return [tuple(r) for r in step.pages] if step.pages is not None else None  # type: ignore[misc]

    def clean_workers(self) -> None:
        for p in self.procs.values():
            if p.merge_any:
                p.handle.call("clean")

    # -- ops

    def op_spawn(self, step: Step) -> None:
        assert step.proc is not None
        handle = self.s.spawn(step.proc)
        self.procs[step.proc] = _Proc(step.proc, handle)
        self.pids[step.proc] = handle.pid

    def op_fork(self, step: Step) -> None:
        assert step.child is not None
        parent = self._p(step.proc)
        handle = parent.handle.fork(step.child)
        self.s.adopt(handle)
        self.procs[step.child] = _Proc(step.child, handle, dict(parent.maps), parent.merge_any)
        self.pids[step.child] = handle.pid

    def op_exit(self, step: Step) -> None:
        p = self.procs.pop(str(step.proc))
        p.handle.exit()
        self.s.forget(p.handle)

    def op_mmap(self, step: Step) -> None:
        p = self._p(step.proc)
        assert step.vma is not None and step.count is not None
        reply = p.handle.call("mmap", vma=step.vma, pages=step.count)
        p.maps[step.vma] = (int(reply["addr"]), step.count)

    def op_munmap(self, step: Step) -> None:
        p = self._p(step.proc)
        p.handle.call("munmap", vma=step.vma)
        p.maps.pop(str(step.vma), None)

    def op_write(self, step: Step) -> None:
        p = self._p(step.proc)
        ranges = self._ranges(step)
        p.handle.call(
            "write", vma=step.vma, ranges=ranges, content=step.content, serial=self.serial
        )
        self.serial += sum(hi - lo for lo, hi in ranges or [(0, p.maps[str(step.vma)][1])])

    def op_read(self, step: Step) -> None:
        self._p(step.proc).handle.call("read", vma=step.vma, ranges=self._ranges(step))

    def op_madvise(self, step: Step) -> None:
        self._p(step.proc).handle.call(
            "madvise", vma=step.vma, ranges=self._ranges(step), advice=step.advice
        )

    def op_prctl(self, step: Step) -> None:
        p = self._p(step.proc)
        if step.value:
            p.merge_any = True  # set first: a failed prctl may still have marked VMAs
        p.handle.call("prctl", value=step.value)

    def op_sysfs(self, step: Step) -> None:
        knob, value = str(step.knob), step.value
        s = self.sysfs
        if not s.exists(knob):
            self.skipped.append({"knob": knob, "value": value, "step": step.index})
            return
        if knob == "run" and value in (1, "1"):
            self.step_errors.append(
                {
                    "step": step.index,
                    "op": "sysfs",
                    "knob": knob,
                    "value": value,
                    "errno": None,
                    "error": "run=1 is only written by scan steps",
                }
            )
            return
        was = s.read("run")
        try:
            s.write(knob, value)
        except OSError as exc:
            self.step_errors.append(
                {
                    "step": step.index,
                    "op": "sysfs",
                    "knob": knob,
                    "value": value,
                    "errno": errno_name(exc),
                }
            )
            return
        if knob == "run" and value in (2, "2") and was != 2:
            self.base["full_scans"] = 0  # a successful run=2 resets full_scans (seqnr)

    def op_scan(self, step: Step) -> None:
        assert step.passes is not None
        self.clean_workers()
        s = self.sysfs
        saved = {k: s.read(k) for k in ("pages_to_scan", "sleep_millisecs")}
        before = s.counters()
        fs0 = before["full_scans"] or 0
        target = fs0 + step.passes
        ksmd = self.s.ksmd if self.s.ksmd and self.proc.comm(self.s.ksmd) == "ksmd" else None
        # ksmd may still be in its timed wait with the value the previous scan left: the
        # first value written here must differ from it, or that wait never ends
        sleeps = [
            v for v in WAKE_SLEEP_MS if v not in (saved["sleep_millisecs"], self.s.last_sleep)
        ][:2]
        cfg = self.s.config
        stall = cfg.stall_seconds if ksmd else max(1.0, 5 * cfg.scan_sleep_ms / 1000)
        t0 = time.monotonic()
        gave_up = False
        wakes = nudges = 0
        current: KnobValue = sleeps[0] if ksmd else cfg.scan_sleep_ms

        def wake() -> None:
            nonlocal current
            current = sleeps[1] if current == sleeps[0] else sleeps[0]
            s.write("sleep_millisecs", current)  # a new value ends ksmd's timed wait
            self.s.last_sleep = current

        try:
            try:
                s.write("pages_to_scan", SCAN_PAGES)
            except OSError as exc:
                self.warnings.append(
                    f"step {step.index}: pages_to_scan={SCAN_PAGES}: "
                    f"{errno_name(exc)} (a batch may not be a whole pass)"
                )
            s.write("sleep_millisecs", current)
            self.s.last_sleep = current
            s.write("run", 1)
            last, last_change, need_wake = fs0, time.monotonic(), False
            while True:
                # ksmd's state first, then the counter: "asleep" with an unchanged counter
                # then means no pass ran since the last wake-up (only we wake it)
                state = self.proc.state(ksmd) if ksmd else "S"
                fs = s.read_int("full_scans") or 0
                now = time.monotonic()
                if fs >= target:
                    break
                if fs != last:
                    last, last_change, need_wake = fs, now, ksmd is not None
                if ksmd and state == "S" and need_wake:
                    wake()  # exactly one more pass
                    need_wake, last_change = False, now
                    wakes += 1
                elif ksmd and state == "S" and not nudges and now - last_change > NUDGE_SECONDS:
                    wake()  # a lost wake-up? harmless if ksmd waits for a registered mm
                    nudges, last_change = 1, now
                elif state == "S" and now - last_change > stall:
                    gave_up = True
                    break
                time.sleep(0.0002)
        finally:
            s.write("run", 0)
            for knob, value in saved.items():
                if value is not None:
                    s.write(knob, value)
        after = s.counters()
        fs1 = after["full_scans"] or 0
        if fs1 > target:
            self.warnings.append(f"step {step.index}: ksmd ran {fs1 - target} extra pass(es)")
        ps0, ps1 = before["pages_scanned"], after["pages_scanned"]
        self.scans.append(
            {
                "step": step.index,
                "passes": step.passes,
                "full_scans_before": fs0 - (self.base["full_scans"] or 0),
                "full_scans_after": fs1 - (self.base["full_scans"] or 0),
                "pages_scanned": None if ps0 is None or ps1 is None else ps1 - ps0,
                "seconds": round(time.monotonic() - t0, 3),
                "wakes": wakes,
                **({"nudges": nudges} if nudges else {}),
                **({"gave_up": True} if gave_up else {}),
            }
        )

    def op_checkpoint(self, step: Step) -> None:
        self.clean_workers()
        counters = self.sysfs.counters()
        glob: dict[str, int | None] = {}
        for name in COUNTERS:
            value = counters[name]
            base = self.base.get(name)
            if name in CUMULATIVE and value is not None:
                value -= base or 0
            glob[name] = value
        procs: dict[str, Any] = {}
        pages: dict[str, dict[str, str]] = {}
        knum: dict[int, int] = {}
        try:
            raw = {name: self.read_pages(p) for name, p in self.procs.items()}
            smaps = {name: self.proc.smaps(p.handle.pid) for name, p in self.procs.items()}
        except ProcessGone:
            raise ReplayFailed("a worker vanished") from None
        solved = None
        if not self.s.classification.get("kpf_ksm_reliable"):
            solved = self.solve_dirty_rule(raw, smaps)
        for name, p in self.procs.items():
            try:
                fields, sources = self.proc.proc_fields(p.handle.pid)
                self.proc_sources.update(sources)
                procs[name] = fields
                pages[name] = self.page_tokens(
                    p, knum, str(step.name), raw[name], solved, smaps[name]
                )
            except ProcessGone:
                raise ReplayFailed(f"worker {name!r} vanished") from None
        self.checkpoints.append({"name": step.name, "global": glob, "procs": procs, "pages": pages})

    def read_pages(self, p: _Proc) -> dict[str, tuple[list[int], dict[int, int]]]:
        """pagemap entries and kpageflags of every scenario mapping of a worker."""
        out = {}
        for vma, (addr, count) in p.maps.items():
            entries = self.proc.pagemap(p.handle.pid, addr, count, PAGE)
            pfns = [e & PM_PFN_MASK for e in entries if e & PM_PRESENT]
            out[vma] = (entries, self.proc.kpageflags(pfns))
        return out

    def solve_dirty_rule(
        self,
        raw: dict[str, dict[str, tuple[list[int], dict[int, int]]]],
        smaps: dict[str, list[SmapsVma]],
    ) -> tuple[set[int], set[int]] | None:
        """When KPF_KSM is unreliable: which frames are KSM pages, and which cannot be told.

        The dirty rule (anonymous and PG_dirty) also catches an ordinary page whose PTE
        dirty bit went to the folio when ksmd write-protected it while it was shared
        copy-on-write, and then merged only the other process's mapping. smaps' ``KSM:``
        line counts each VMA's KSM pages exactly, so the rule's candidates are narrowed to
        the assignments that meet every mapping's count. Candidates mapped by the same
        numbers of PTEs in the same mappings are interchangeable: when the counts allow
        some but not all of them to be KSM, userspace cannot tell which (a KSM frame and a
        left-over copy-on-write frame each mapped once, after the process sharing them
        exited); the first ones are taken and all are reported as ambiguous.

        Returns ``(ksm, ambiguous)`` frames, or None when smaps has no ``KSM:`` line or no
        assignment meets the counts (then the plain rule is kept; ``check_smaps`` warns).
        """
        # a KSM page is never PageAnonExclusive (if the probe showed the bit is exported)
        exclusive = 1 << KPF_ANON_EXCLUSIVE if self.s.classification.get("anon_exclusive") else 0
        allowed: dict[tuple[str, str], int] = {}
        sigs: dict[int, dict[tuple[str, str], int]] = {}  # in order of first sight
        for name, p in self.procs.items():
            vmas = smaps[name]
            if any(v.ksm_kb is None for v in vmas):
                return None
            for vma, (addr, count) in p.maps.items():
                end = addr + count * PAGE
                key = (name, vma)
                allowed[key] = (
                    sum(v.ksm_kb or 0 for v in vmas if addr <= v.start < end) * 1024 // PAGE
                )
                entries, flags = raw[name][vma]
                for e in entries:
                    if not e & PM_PRESENT:
                        continue
                    pfn = e & PM_PFN_MASK
                    f = flags.get(pfn, 0)
                    if (
                        f & (1 << KPF_ANON)
                        and f & (1 << KPF_DIRTY)
                        and not f & (1 << KPF_ZERO_PAGE)
                        and not f & exclusive
                    ):
                        sig = sigs.setdefault(pfn, {})
                        sig[key] = sig.get(key, 0) + 1
        solved = solve_ksm_frames(sigs, {key: (n, n) for key, n in allowed.items()})
        if solved is None:
            return None
        ksm, ambiguous = solved
        if len(ksm) != len(sigs):
            self.dirty_rule_resolved += 1
        return ksm, ambiguous

    def page_tokens(
        self,
        p: _Proc,
        knum: dict[int, int],
        where: str,
        raw: dict[str, tuple[list[int], dict[int, int]]],
        solved: tuple[set[int], set[int]] | None,
        vmas: list[SmapsVma],
    ) -> dict[str, str]:
        reliable = bool(self.s.classification.get("kpf_ksm_reliable"))
        out: dict[str, str] = {}
        counts: dict[str, int] = {}
        for vma in p.maps:
            entries, flags = raw[vma]
            tokens = []
            tied: list[int] = []
            for i, e in enumerate(entries):
                if not e & PM_PRESENT:
                    tokens.append("-")
                    continue
                pfn = e & PM_PFN_MASK
                f = flags.get(pfn, 0)
                by_dirty = bool(f & (1 << KPF_ANON)) and bool(f & (1 << KPF_DIRTY))
                if f & (1 << KPF_ZERO_PAGE):
                    tokens.append("Z")
                    continue
                ksm = bool(f & (1 << KPF_KSM)) if reliable else by_dirty
                if solved is not None:
                    ksm = pfn in solved[0]
                    if pfn in solved[1]:
                        tied.append(i)
                if reliable and ksm != by_dirty:
                    self.dirty_disagreements += 1
                if ksm:
                    n = knum.setdefault(pfn, len(knum))
                    tokens.append(f"K{n}")
                else:
                    tokens.append("A")
            out[vma] = " ".join(tokens)
            counts[vma] = sum(1 for t in tokens if t.startswith("K"))
            if tied:
                self.ambiguous.append(
                    {
                        "checkpoint": len(self.checkpoints),
                        "name": where,
                        "proc": p.name,
                        "vma": vma,
                        "pages": tied,
                    }
                )
        self.check_smaps(p, counts, where, vmas)
        return out

    def check_smaps(
        self, p: _Proc, counts: dict[str, int], where: str, vmas: list[SmapsVma]
    ) -> None:
        """K tokens against smaps ``KSM:``; no VMA but scenario mappings may be mergeable."""
        spans = [(a, a + n * PAGE) for a, n in p.maps.values()]
        strays = [
            v for v in vmas if v.mergeable and not any(lo <= v.start < hi for lo, hi in spans)
        ]
        if strays:
            self.warnings.append(
                f"checkpoint {where!r}: {p.name} has mergeable VMAs that are "
                f"not scenario mappings: "
                + ", ".join(f"{v.start:#x}-{v.end:#x}" for v in strays[:4])
            )
        if not p.maps or any(v.ksm_kb is None for v in vmas):
            return  # no KSM: line before 6.6
        self.smaps_checks += 1
        for vma, (addr, count) in p.maps.items():
            end = addr + count * PAGE
            kb = sum(v.ksm_kb or 0 for v in vmas if addr <= v.start < end)
            if kb * 1024 != counts[vma] * PAGE:
                self.warnings.append(
                    f"checkpoint {where!r}: {p.name}.{vma}: {counts[vma]} K "
                    f"pages but smaps says KSM: {kb} kB"
                )


# --------------------------------------------------------------------------------------
# command line (also used by ``ksmlab replay``)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", nargs="?", help="ksm-scenario/1 file (JSON)")
    parser.add_argument(
        "--trace", metavar="OUT.json", help="write the trace here (default: standard output)"
    )
    parser.add_argument(
        "--force", action="store_true", help="replay even if another process uses KSM"
    )
    parser.add_argument(
        "--restore",
        action="store_true",
        help="put the knobs saved by an interrupted (killed) replay back",
    )
    parser.add_argument(
        "--expect",
        metavar="TRACE.json",
        help="compare with this trace; exit status 1 if they differ",
    )
    parser.add_argument(
        "--state-file",
        type=Path,
        default=None,
        help=f"knob state file (default {state_file_path()})",
    )
    parser.add_argument(
        "--lock-file", type=Path, default=None, help=f"host lock file (default {lock_file_path()})"
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=None,
        help="seconds to wait for another replay (default: forever)",
    )
    parser.add_argument("--sysfs-root", default=DEFAULT_ROOT, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> ReplayConfig:
    cfg = ReplayConfig(
        sysfs_root=args.sysfs_root,
        force=bool(args.force),
        lock_timeout=args.lock_timeout,
        log=_stderr_line,
    )
    if args.state_file is not None:
        cfg.state_file = args.state_file
    if args.lock_file is not None:
        cfg.lock_file = args.lock_file
    return cfg


def _stderr_line(line: str) -> None:
    sys.stderr.write(f"ksmlab replay: {line}\n")


def restore_command(cfg: ReplayConfig) -> int:
    """``--restore``: knobs back from the state file of a killed replay."""
    sysfs = KsmSysfs(cfg.sysfs_root)
    try:
        check_privileges(sysfs)
        with host_lock(cfg.lock_file, cfg.lock_timeout, _stderr_line):
            found, problems = restore_from_state_file(
                cfg.state_file, None, lambda w: kill_recorded_workers(ProcFs(cfg.proc_root), w)
            )
    except Refusal as exc:
        _stderr_line(str(exc))
        return EXIT_REFUSED
    if not found:
        _stderr_line(f"nothing to restore ({cfg.state_file} does not exist)")
        return EXIT_OK
    if problems:
        _stderr_line(f"could not restore: {problems}")
        return EXIT_FAILED
    _stderr_line(f"knobs restored from {cfg.state_file}")
    return EXIT_OK


def replay_scenario(scenario: Scenario, cfg: ReplayConfig) -> dict[str, Any]:
    """Replay one scenario in its own session; the trace's meta has the restore outcome.

    Raises :class:`Refusal`, :class:`Unsupported`, :class:`ReplayFailed`,
    :class:`Interrupted`.
    """
    check_privileges(KsmSysfs(cfg.sysfs_root))
    step = scenario_needs_prctl(scenario)
    if step is not None and not libc.memory_merge_supported():
        raise Unsupported(
            f"step {step.index}: prctl PR_SET_MEMORY_MERGE does not exist on "
            f"kernel {os.uname().release} (6.4+)"
        )
    session = KernelSession(cfg)
    with session:
        trace = session.replay(scenario)
    trace["meta"]["restore_problems"] = session.restore_problems
    trace["meta"]["warnings"].extend(session.warnings)
    return trace


def run(args: argparse.Namespace) -> int:
    """Entry point shared by ``ksmlab replay`` and ``python3 -m app.kernel.replayer``."""
    cfg = config_from_args(args)
    if args.restore:
        if args.scenario:
            _stderr_line("--restore takes no scenario")
            return EXIT_REFUSED
        return restore_command(cfg)
    if not args.scenario:
        _stderr_line("a scenario file is required (or --restore)")
        return EXIT_REFUSED
    try:
        scenario = load_scenario(args.scenario)
        expect = None
        if args.expect:
            from sim.trace import load_trace

            expect = load_trace(args.expect)
    except ScenarioError as exc:
        _stderr_line(f"{args.scenario}: {exc}")
        return EXIT_REFUSED
    try:
        trace = replay_scenario(scenario, cfg)
    except Refusal as exc:
        _stderr_line(str(exc))
        return EXIT_REFUSED
    except Unsupported as exc:
        _stderr_line(f"unsupported on this kernel: {exc}")
        return EXIT_UNSUPPORTED
    except ReplayFailed as exc:
        _stderr_line(f"replay failed: {exc}")
        return EXIT_FAILED
    except Interrupted as exc:
        _stderr_line(f"{exc}; knobs restored")
        return 128 + exc.signum
    text = json.dumps(trace, indent=1) + "\n"
    if args.trace:
        Path(args.trace).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    problems = trace["meta"]["restore_problems"]
    if problems:
        _stderr_line(f"knobs not restored: {problems}")
        return EXIT_FAILED
    if expect is not None:
        from sim.trace import compare_traces, without_ties

        diffs = compare_traces(expect, trace)
        if diffs and without_ties(expect, trace) == []:
            _stderr_line(
                f"the trace agrees with {args.expect} except which tied pages are "
                "the KSM ones (meta.page_classification.ambiguous_pages)"
            )
            return EXIT_OK
        for line in diffs[:40]:
            sys.stderr.write(f"  {line}\n")
        if diffs:
            _stderr_line(f"the trace differs from {args.expect} ({len(diffs)} differences)")
            return EXIT_DIFFER
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m app.kernel.replayer",
        description="Replay a ksm-scenario/1 file on this machine's kernel (root).",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
