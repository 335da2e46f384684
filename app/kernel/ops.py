"""Op execution: one scenario replayed step by step in an open :class:`~.session.KernelSession`.

Conventions (``shared/scenario-format.md``, ``shared/traces/README.md``, ``ksm-model.md``
§3.3 and §11):

* every run starts from a clean KSM state (``run=2`` then ``run=0``: no rmap_items, no
  stable nodes, ``full_scans`` 0) with the format's default knobs plus the scenario's
  ``sysfs``; knobs this kernel lacks are skipped (``meta.skipped_knobs``);
* one worker process per scenario process (:mod:`.worker`); ksmd is stopped (``run=0``)
  during every step but ``scan``;
* ``scan N`` runs exactly N full passes, paced by the format's clock: a pass starts
  ``PASS_GAP_SECONDS`` (200 ms) plus a small margin (:func:`pass_gap`) after the start of
  the previous one (of this scan or an
  earlier one), never sooner, so the kernel's prune timer sees the time the simulator
  keeps (``meta.pacing``; not when no clock can matter: :func:`needs_clock`);
  ``pages_to_scan`` is set so large that one batch is one whole pass, and
  ``sleep_millisecs`` to an hour, so ksmd sleeps after every pass until the replayer
  *changes* ``sleep_millisecs`` (which wakes it for exactly one more pass, once
  ``/proc/<ksmd>/stat`` shows it asleep); then ``run=0`` and both knobs are put back. With
  no registered process no pass ever completes: the replayer gives up once ksmd has slept
  for ``stall_seconds`` without progress and records the real counter. (If the ksmd thread
  cannot be found, ``sleep_millisecs`` is the format's 200 ms and the counter is polled.)
* a ``checkpoint`` is read by :mod:`.observe`.

A failed system call of a step (an errno) is recorded in ``meta.step_errors`` and the replay
goes on; a worker that vanishes or a broken worker raises :class:`ReplayFailed`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sim.scenario import Scenario, Step

from .host.procfs import ProcessGone
from .observe import Observer, Proc
from .session import KernelSession, Unsupported, scenario_needs_prctl
from .sysfs import CUMULATIVE, DEFAULT_KNOBS, KnobValue, errno_name
from .worker import PAGE, WorkerError

REPLAYER = "ksmlab-replay/1"
TRACE_FORMAT = "ksm-trace/1"
SCAN_PAGES = 1_000_000_000  # pages_to_scan during a scan: a batch always ends with its pass
WAKE_SLEEP_MS = 3_600_000  # an hour between passes
#: every wake-up writes a value not written shortly before (``fresh_sleep`` in
#: :meth:`Replay.op_scan`): ksmd's timed wait (``ksm_scan_thread``) ends only if the value
#: differs from the one it read after its pass; toggling between two values let a second
#: write (the nudge) undo the first one before a descheduled ksmd rechecked its condition
#: (a TCG guest under load: ksmd slept an hour, the scan gave up after one pass)
WAKE_SLEEP_SPAN = 1_000_000
NUDGE_SECONDS = 0.05  # ksmd asleep this long after a wake-up without a pass: wake it again
#: the format's clock: consecutive passes start this far apart, also across scan steps
PASS_GAP_SECONDS = 0.2
#: the most a paced pass starts later than the format's gap, spread over the longest prune
#: interval (:func:`pass_gap`)
PASS_GAP_MARGIN_SECONDS = 0.05
PRUNE_KNOB = "stable_node_chains_prune_millisecs"
#: knobs that read the clock (``ksm-model.md``: the chain prune timer, the advisor)
CLOCK_KNOBS = (PRUNE_KNOB, "advisor_mode")


def needs_clock(scenario: Scenario) -> bool:
    """Can time change this scenario's result? Not when the prune timer is 0 throughout
    (initial ``sysfs`` and every ``sysfs`` step) and the advisor is never switched on: the
    kernel then reads no clock, and passes need not be paced."""
    prune = scenario.sysfs.get(PRUNE_KNOB, DEFAULT_KNOBS.get(PRUNE_KNOB, 2000))
    if str(prune) != "0" or "advisor_mode" in scenario.sysfs:
        return True
    for step in scenario.steps:
        if step.op == "sysfs" and step.knob in CLOCK_KNOBS and str(step.value) not in ("0", ""):
            return True
    return False


def pass_gap(scenario: Scenario) -> float:
    """The real time between pass starts: the format's 200 ms plus a margin, so that a
    chain's prune timer is due on the kernel when the format says so although the walk
    that checks it may come earlier in its pass than the one that set it (ksmd runs at
    nice 5: on a loaded host a pass can stretch over tens of ms; the host fuzz, seed 16
    scenario 130, at load 7: a search did not prune after exactly 5 passes of 1000 ms).
    The margin, 50 ms over the longest prune interval of the scenario (in passes), keeps
    a timer that is not due one pass before not due as long as the steps between scans
    and the stretch of a pass add up to less than 150 ms."""
    values = [scenario.sysfs.get(PRUNE_KNOB, DEFAULT_KNOBS.get(PRUNE_KNOB, 2000))]
    values += [st.value for st in scenario.steps if st.op == "sysfs" and st.knob == PRUNE_KNOB]
    gap_ms = round(PASS_GAP_SECONDS * 1000)
    passes = max((-(-int(v) // gap_ms) for v in values if str(v).isdigit()), default=1)
    return PASS_GAP_SECONDS + PASS_GAP_MARGIN_SECONDS / max(1, passes)


def pacing(paced: bool, gap: float = PASS_GAP_SECONDS) -> dict[str, Any]:
    """``meta.pacing``: how passes were spaced in time."""
    if not paced:
        return {
            "pass_gap_ms": 0,
            "reason": f"{PRUNE_KNOB} is 0 throughout and the advisor is off: no clock is read",
        }
    return {
        "pass_gap_ms": round(PASS_GAP_SECONDS * 1000),
        "margin_ms": round((gap - PASS_GAP_SECONDS) * 1000, 1),
        "from": "pass start",
        "note": "each pass starts 200 ms plus the margin or more after the previous one "
        "(the format's clock; the margin keeps a prune that is due on the format's clock due "
        "on the kernel's); scans[].late_ms: how much later than that the latest of its "
        "passes started",
    }


class ReplayFailed(Exception):
    """The replay could not be carried out (exit status 3)."""


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


class Replay:
    """One scenario replayed in an open session: runs each step, returns the trace."""

    def __init__(self, session: KernelSession, scenario: Scenario) -> None:
        self.s = session
        self.sysfs = session.sysfs
        self.proc = session.proc
        self.scenario = scenario
        self.procs: dict[str, Proc] = {}  # live, in creation order
        self.pids: dict[str, int] = {}
        self.serial = 0
        self.base: dict[str, int | None] = {}
        self.checkpoints: list[dict[str, Any]] = []
        self.warnings: list[str] = list(session.warnings)
        session.warnings.clear()
        self.scans: list[dict[str, Any]] = []
        self.step_errors: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}
        self.last_start: float | None = None  # when the latest pass was started (monotonic)
        self.paced = needs_clock(scenario)
        self.gap = pass_gap(scenario)  # between pass starts when paced
        # sleep_millisecs values written to wake ksmd (WAKE_SLEEP_MS + seq): start from the
        # clock, so that a forked replay (one per scenario in a guest) writes other values
        self.wake_seq = int(time.time() * 1000) % WAKE_SLEEP_SPAN
        self.observe = Observer(self.sysfs, self.proc, session.classification, self.warnings)

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
        meta = {
            "warnings": self.warnings,
            "scans": self.scans,
            "step_errors": self.step_errors,
            "skipped_knobs": self.skipped,
            "proc_sources": self.observe.proc_sources,
            "isolation": self.s.isolation,
            "initial_counters": initial,
            "start_counters": self.meta["start_counters"],
            "page_classification": self.observe.classification(),
            "kernel_features": self.s.features,
            "saved_knobs": dict(self.s.guard.saved or {}),
            "restore_problems": {},
            "pids": self.pids,
            "run_seconds": round(time.monotonic() - t0, 3),
            "replayer": REPLAYER,
            "date": _utc_now(),
            "page_size": PAGE,
            "scan_method": "wake" if self.s.ksmd else f"sleep {round(PASS_GAP_SECONDS * 1000)} ms",
            "pacing": pacing(self.paced, self.gap),
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

    def _p(self, name: str | None) -> Proc:
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
        self.procs[step.proc] = Proc(step.proc, handle)
        self.pids[step.proc] = handle.pid

    def op_fork(self, step: Step) -> None:
        assert step.child is not None
        parent = self._p(step.proc)
        handle = parent.handle.fork(step.child)
        self.s.adopt(handle)
        self.procs[step.child] = Proc(step.child, handle, dict(parent.maps), parent.merge_any)
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

        def fresh_sleep() -> int:
            """A value not written shortly before: ksmd may still be in its timed wait with
            the value the previous scan left, and a wake must differ from what it read."""
            while True:
                self.wake_seq += 1
                v = WAKE_SLEEP_MS + self.wake_seq % WAKE_SLEEP_SPAN
                if v not in (saved["sleep_millisecs"], self.s.last_sleep):
                    return v

        cfg = self.s.config
        # without ksmd's thread, ksmd sleeps the format's gap between passes by itself
        stall = cfg.stall_seconds if ksmd else max(1.0, 5 * PASS_GAP_SECONDS)
        t0 = time.monotonic()
        gave_up = False
        wakes = nudges = 0
        late = 0.0  # the most a pass of this scan started after its due time
        current: KnobValue = fresh_sleep() if ksmd else round(self.gap * 1000)

        def due() -> float:
            """When the next pass may start: the format's gap after the previous start."""
            if self.last_start is None or not self.paced:
                return -1.0
            return self.last_start + self.gap

        def started(now: float) -> None:
            nonlocal late
            if self.last_start is not None:
                late = max(late, now - due())
            self.last_start = now

        def wake() -> None:
            nonlocal current
            current = fresh_sleep()
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
            wait = due() - time.monotonic()
            if wait > 0:  # the steps since the previous scan took less than the gap
                time.sleep(wait)
            s.write("run", 1)
            started(time.monotonic())
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
                    if now >= due():  # the format's clock: 200 ms (+ margin) after the last start
                        wake()  # exactly one more pass
                        started(now)
                        need_wake, last_change = False, now
                        wakes += 1
                elif (
                    ksmd and state == "S" and not nudges and now - last_change > NUDGE_SECONDS
                ):  # need_wake is False here: no pass ended since the last wake-up
                    wake()  # a lost wake-up? harmless if ksmd waits for a registered mm
                    started(now)  # the pass may start only now: never count a short gap
                    nudges, last_change = 1, now
                elif state == "S" and not need_wake and now - last_change > stall:
                    gave_up = True
                    break
                if need_wake and state == "S":  # asleep for an hour: nothing to watch
                    time.sleep(max(0.0002, due() - time.monotonic()))
                else:
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
                "late_ms": round(late * 1000, 1),
                **({"nudges": nudges} if nudges else {}),
                **({"gave_up": True} if gave_up else {}),
            }
        )

    def op_checkpoint(self, step: Step) -> None:
        self.clean_workers()
        obs = self.observe
        glob = obs.global_counters(self.base)
        procs: dict[str, Any] = {}
        pages: dict[str, dict[str, str]] = {}
        knum: dict[int, int] = {}
        try:
            raw, smaps = obs.read(self.procs)
        except ProcessGone:
            raise ReplayFailed("a worker vanished") from None
        solved = obs.solve_dirty_rule(self.procs, raw, smaps)
        for name, p in self.procs.items():
            try:
                procs[name] = obs.proc_fields(p)
                pages[name] = obs.page_tokens(
                    p, knum, str(step.name), len(self.checkpoints), raw[name], solved, smaps[name]
                )
            except ProcessGone:
                raise ReplayFailed(f"worker {name!r} vanished") from None
        self.checkpoints.append({"name": step.name, "global": glob, "procs": procs, "pages": pages})


def replay(session: KernelSession, scenario: Scenario) -> dict[str, Any]:
    """Replay ``scenario`` in the open ``session``; returns its ``ksm-trace/1`` trace."""
    if not session.is_open:
        raise RuntimeError("session is not open")
    step = scenario_needs_prctl(scenario)
    if step is not None and not session.features.get("prctl_memory_merge"):
        raise Unsupported(
            f"step {step.index}: prctl PR_SET_MEMORY_MERGE does not exist "
            f"on kernel {os.uname().release} (6.4+)"
        )
    return Replay(session, scenario).run()
