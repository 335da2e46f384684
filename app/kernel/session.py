"""The host session of a replay: exclusive use of the host's KSM, its lock and its knobs.

:class:`KernelSession` (a context manager) is what a replay, or a run of many (``ksmlab
fuzz``), holds: it refuses to start without root, a writable sysfs or while another process
uses KSM (:mod:`.guard`), takes the host lock (one replay at a time), puts back knobs left by
a killed replay, saves every writable knob before the first write and restores them on every
way out (including SIGTERM/SIGINT/SIGHUP, raised as :class:`Interrupted` so that every
``finally`` runs), kills the workers (:mod:`.worker`) it spawned, and probes the kernel once
(files, ``ksm_stat`` lines, prctl, THP, ksmd's pid, whether ``KPF_KSM`` can be trusted).

:meth:`KernelSession.replay` runs one scenario (:mod:`.ops`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from sim.scenario import Scenario, Step

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
from .host.procfs import KPF_ANON_EXCLUSIVE, KPF_KSM, PM_PFN_MASK, PM_PRESENT, ProcFs
from .sysfs import COUNTERS, DEFAULT_KNOBS, DEFAULT_ROOT, KnobValue, KsmSysfs
from .worker import PAGE, WorkerError, WorkerHandle, spawn_worker

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
THP_DIR = "/sys/kernel/mm/transparent_hugepage"
EXPECTED_FILES = tuple(sorted(set(COUNTERS) | set(DEFAULT_KNOBS) | {"advisor_mode"}))


class Unsupported(Exception):
    """The scenario uses an operation this kernel does not have (exit status 4)."""


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

    @property
    def is_open(self) -> bool:
        """Knobs saved, lock held, ready to replay (:func:`app.kernel.ops.replay`)."""
        return self._open

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
