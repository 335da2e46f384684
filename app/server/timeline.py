"""A session's timeline: recorded actions, branches, sparse stepper checkpoints, replay.

Step 0 is the kernel after the scenario's knobs; step ``k`` is the state after ``k`` actions,
each one of the typed actions of :mod:`sim.stepper` fed to a :class:`~sim.stepper.Stepper`
(which holds the kernel and where the scenario is):

- :class:`~sim.stepper.Next`: what comes next by grain (``docs/protocol.md`` section 1): a
  batch (page, pass) of a scenario ``scan`` in progress, else the next scenario step, else a
  ksmd batch if ksmd would run; nothing at all means the timeline is at its end;
- :class:`~sim.stepper.Inject`: a scenario op applied now (validated by
  :func:`sim.stepper.validate_op`);
- :class:`~sim.stepper.WriteKnob`: a sysfs write.

The simulator is deterministic, so a step is recomputed from the nearest earlier checkpoint
(a :meth:`sim.stepper.Stepper.clone`, kept every ``interval`` steps and thinned to fit a
memory budget) by replaying the recorded actions. An action added while viewing a past step
starts a new :class:`Branch`; the old one stays reachable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sim import Kernel
from sim.changes import ChangeLog, page_key
from sim.kernel import PAGE_SIZE, RMAP_ITEM_SIZE
from sim.scenario import Scenario
from sim.stepper import GRAINS, Action, Grain, Next, Outcome, Stepper
from sim.timemodel import BatchCost, CpuCosts, TimeAccount, batch_cost, first_pass_pages

#: the recorded scenario checkpoints may always use this much, however small the budget
MIN_TRACE_BYTES = 16 << 20
CounterRow = tuple[tuple[int | None, ...], dict[str, tuple[Any, ...]]]
#: the time account after a step: (simulated ns, ksmd CPU ns, batches charged)
TimeRow = tuple[int, int, int]
_GRAINS: dict[str, Grain] = {g: g for g in GRAINS}


class LimitError(Exception):
    """A configured limit or an impossible request (names the field)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass
class StepResult:
    """One step of the timeline: its number, what the stepper did, the kernel's changes."""

    step: int
    outcome: Outcome
    log: ChangeLog

    @property
    def action(self) -> str:
        """The step's sentence (``Outcome.text``)."""
        return self.outcome.text

    @property
    def checkpoint(self) -> str | None:
        """The scenario checkpoint this step recorded, if any."""
        return self.outcome.checkpoint


@dataclass
class Branch:
    id: int
    parent: int | None
    base: int
    actions: list[Action] = field(default_factory=list)
    checkpoints: dict[int, Stepper] = field(default_factory=dict)
    trace: dict[int, dict[str, Any]] = field(default_factory=dict)
    counters: list[CounterRow] = field(default_factory=list)
    #: the steps a talk points at (ops, knob writes, checkpoints; not ksmd's batches): their
    #: ``Outcome.what`` by step number, so chart markers and chapters survive back and reload
    marks: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: pages KSM merged into the zero page (by ``sim.changes.page_key``: the steps it did), which
    #: a kernel before 6.6 cannot tell from a read fault's zero page (the inspector can)
    zero_merges: dict[int, list[int]] = field(default_factory=dict)
    #: the result of each step that holds a checkpoint (a seek there needs no replay)
    results: dict[int, StepResult] = field(default_factory=dict)
    #: the running time account (:class:`sim.timemodel.TimeAccount`) after each step, by
    #: step number (like ``counters``): back, seek, reload and forks read it, never recompute
    times: list[TimeRow] = field(default_factory=lambda: [(0, 0, 0)])

    @property
    def head(self) -> int:
        return len(self.actions)

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "parent": self.parent, "base_step": self.base, "head": self.head}


class Timeline:
    """Recorded actions on branches, with sparse checkpoints (see the module docstring)."""

    def __init__(
        self,
        scenario: Scenario,
        stepper: Stepper,
        *,
        interval: int = 32,
        memory_bytes: int = 256 << 20,
        max_steps: int = 1_000_000,
        max_branches: int = 64,
        costs: CpuCosts | None = None,
    ):
        self.scenario = scenario
        #: the CPU model every ksmd batch is charged with (the sweep's defaults)
        self.costs = costs or CpuCosts()
        self.interval = interval
        self.memory_bytes = memory_bytes
        self.max_steps = max_steps
        self.max_branches = max_branches
        stepper.kernel.take_changes()
        root = Branch(0, None, 0)
        root.checkpoints[0] = stepper.clone()
        root.counters.append(_counters(stepper.kernel))
        self.branches = [root]
        self.branch = root
        self.stepper = stepper
        self.step = 0
        #: estimated bytes of the recorded trace checkpoints (they count toward the budget)
        self.trace_bytes = 0
        self._trace_cost = 0
        #: zero pages mapped before step 0 (a fork of a session): who placed them is unknown
        self.zero_at_start = {
            page_key(v.uid, i)
            for mm in stepper.kernel.procs.values()
            for v in mm.vmas.values()
            for i, pfn in enumerate(v.pfn)
            if pfn == 0
        }
        #: the result of the step being viewed (None at step 0)
        self.last: StepResult | None = None

    @property
    def kernel(self) -> Kernel:
        return self.stepper.kernel

    @property
    def head(self) -> int:
        return self.branch.head

    # ----------------------------------------------------------------- actions
    def at_end(self) -> bool:
        """Nothing more can happen from here without a control (and no recorded step ahead)."""
        return self.step >= self.head and self.stepper.at_end

    def forward(self, grain: str = "batch") -> StepResult | None:
        """One step forward: replays the recorded step, or computes a new one at the head."""
        if self.step < self.head:
            action = self.branch.actions[self.step]
        else:
            if self.head >= self.max_steps:
                raise LimitError("max_timeline_steps", f"the branch reached {self.max_steps} steps")
            if grain not in _GRAINS:
                raise LimitError("grain", f"one of {', '.join(GRAINS)}")
            action = Next(_GRAINS[grain])
        return self._do(action)

    def act(self, action: Action) -> StepResult:
        """Apply an injected op or a knob write now (forking the timeline at a past step)."""
        if self.step < self.head and len(self.branches) >= self.max_branches:
            raise LimitError("max_branches", f"at most {self.max_branches} branches")
        res = self._do(action, fork=True)
        assert res is not None
        return res

    def _do(self, action: Action, fork: bool = False) -> StepResult | None:
        st = self.stepper
        if self.step >= self.head and _records_checkpoint(st, action):
            if self.trace_bytes + self._trace_cost > max(self.memory_bytes, MIN_TRACE_BYTES):
                raise LimitError(
                    "timeline_memory_mb",
                    f"the recorded checkpoints fill this session's {self.memory_bytes >> 20} MB",
                )
        k = st.kernel
        can_scan, skipped0 = k.can_scan, k.pages_skipped
        out = st.feed(action)
        if out is None:
            return None
        log = st.kernel.take_changes()
        cost = self._cost(out, log, can_scan, k.pages_skipped - skipped0) if can_scan else None
        if fork and self.step < self.head:
            self._fork_branch()
        self.step += 1
        b = self.branch
        if self.step > b.head:
            b.actions.append(action)
            b.counters.append(_counters(st.kernel))
            now, cpu, batches = b.times[-1]
            if cost is not None:
                charged, n = cost
                now, cpu, batches = now + charged.time_ns, cpu + charged.cpu_ns, batches + n
            b.times.append((now, cpu, batches))
            if out.checkpoint is not None:
                cp = st.kernel.checkpoint(out.checkpoint)
                b.trace[self.step] = cp
                self._trace_cost = _object_bytes(cp)
                self.trace_bytes += self._trace_cost
            if out.what.get("kind") != "ksmd":
                b.marks[self.step] = out.what
            for kind, key in log.events:
                if kind == "zero_merge":
                    b.zero_merges.setdefault(key, []).append(self.step)
        self.last = StepResult(self.step, out, log)
        self._maybe_checkpoint(b, self.step, st, self.last)
        return self.last

    def _cost(
        self, out: Outcome, log: ChangeLog, can_scan: bool, skipped: int
    ) -> tuple[BatchCost, int] | None:
        """What the ksmd work of a step cost, as the sweep charges a batch
        (:meth:`app.whatif.sweep._Driver.batch`): None when the step ran no ksmd (an op,
        a knob write, or a batch with nothing to scan). A ``pass`` is charged as the batches
        of ``pages_to_scan`` stepping batch by batch takes, each with its sleep; a ``page``
        as its CPU only (its batch's sleep is not known to be over). Returns the cost and
        the batches it counts for (a page: none)."""
        what = out.what
        if not can_scan or "scanned" not in what:
            return None
        knobs = self.kernel.knobs
        handed = int(what["scanned"])
        sleep = int(knobs["sleep_millisecs"])
        cost = batch_cost(self.costs, handed, first_pass_pages(log), skipped, 0)
        grain = what.get("grain", "batch")
        if grain == "page":
            sleeps = 0
        elif grain == "pass":
            # the batches of pages_to_scan stepping batch by batch takes: one more when the
            # last one used its whole budget (the pass end is found by the next batch)
            per = max(1, int(knobs["pages_to_scan"]))
            sleeps = -(-handed // per) + (1 if what.get("pass_end") and handed % per == 0 else 0)
        else:
            sleeps = 1
        time_ns = cost.cpu_ns + sleeps * sleep * 1_000_000
        return BatchCost(cost.first, cost.later, cost.skipped, cost.cpu_ns, time_ns), sleeps

    def _fork_branch(self) -> None:
        old, s = self.branch, self.step
        new = Branch(
            len(self.branches),
            old.id,
            s,
            old.actions[:s],
            {k: v for k, v in old.checkpoints.items() if k <= s},
            {k: v for k, v in old.trace.items() if k <= s},
            old.counters[: s + 1],
            {k: v for k, v in old.marks.items() if k <= s},
            {k: [x for x in v if x <= s] for k, v in old.zero_merges.items() if v[0] <= s},
            {k: v for k, v in old.results.items() if k <= s},
            old.times[: s + 1],
        )
        self.branches.append(new)
        self.branch = new

    def _maybe_checkpoint(
        self, b: Branch, step: int, st: Stepper, res: StepResult | None = None
    ) -> None:
        if res is not None and step in b.checkpoints and step not in b.results:
            b.results[step] = res
        if step % self.interval or step in b.checkpoints:
            return
        room = max(0, self.memory_bytes - self.trace_bytes)
        budget = room // max(1, estimate_bytes(st.kernel))
        if budget < 2:
            # a clone of this size does not fit beside step 0's: keep step 0 only (every other
            # step is replayed from it) rather than break the memory budget
            return
        b.checkpoints[step] = st.clone()
        if res is not None:
            b.results[step] = res
        while len(b.checkpoints) > budget:
            keys = sorted(b.checkpoints)
            for key in keys[1:-1:2]:  # keep step 0 and the newest
                del b.checkpoints[key]
                b.results.pop(key, None)
            if len(keys) <= 3:
                break

    # -------------------------------------------------------------------- moves
    def seek(self, step: int, branch: int | None = None) -> StepResult | None:
        """View ``step`` of a branch (default: the current one); returns its last step's result."""
        b = self.branch if branch is None else self._branch(branch)
        if not 0 <= step <= b.head:
            raise LimitError("step", f"step {step} is outside branch {b.id} (0..{b.head})")
        if b is self.branch and step == self.step and self.last is not None:
            return self.last
        base = max(s for s in b.checkpoints if s <= step)
        if base == step and (step == 0 or step in b.results):  # no replay needed
            st = b.checkpoints[step].clone()
            last = b.results.get(step)
            self.stepper, self.branch, self.step, self.last = st, b, step, last
            return last
        # from before the step, so that its result (its sentence) is known again
        base = max(s for s in b.checkpoints if s < step or s == 0)
        if b is self.branch and base <= self.step < step:
            st, at = self.stepper, self.step
        else:
            st, at = b.checkpoints[base].clone(), base
        last = None
        while at < step:
            out = st.feed(b.actions[at])
            assert out is not None, "replay diverged"
            at += 1
            last = StepResult(at, out, st.kernel.take_changes())
            self._maybe_checkpoint(b, at, st, last)
        self.stepper, self.branch, self.step, self.last = st, b, step, last
        return last

    def stepper_at(self, step: int) -> Stepper:
        """An independent copy of the stepper at ``step`` of the current branch."""
        if not 0 <= step <= self.head:
            raise LimitError("step", f"step {step} is outside 0..{self.head}")
        b = self.branch
        if step == self.step:
            return self.stepper.clone()
        base = max(s for s in b.checkpoints if s <= step)
        st = b.checkpoints[base].clone()
        for at in range(base, step):
            st.feed(b.actions[at])
            st.kernel.take_changes()
        return st

    def ksm_placed(self, uid: int, page: int) -> bool | None:
        """Whether KSM merged this page into the zero page by the viewed step (None: not
        known, the page was on the zero page before step 0). Only meaningful for a page that
        maps the zero page now: nothing but a KSM merge puts a mapped page back there."""
        key = page_key(uid, page)
        if any(s <= self.step for s in self.branch.zero_merges.get(key, ())):
            return True
        return None if key in self.zero_at_start else False

    def _branch(self, branch: int) -> Branch:
        if not 0 <= branch < len(self.branches):
            raise LimitError("branch", f"no branch {branch} (0..{len(self.branches) - 1})")
        return self.branches[branch]

    # ------------------------------------------------------------------ exports
    def trace_checkpoints(self) -> list[dict[str, Any]]:
        return [cp for s, cp in sorted(self.branch.trace.items()) if s <= self.step]

    def counter_rows(self) -> list[CounterRow]:
        return self.branch.counters[: self.step + 1]

    def marks(self) -> list[dict[str, Any]]:
        """The recorded steps of the branch a talk points at: ``{"step", "what"}``, in order."""
        return [{"step": s, "what": w} for s, w in sorted(self.branch.marks.items())]

    def time_account(self) -> TimeAccount:
        """The running time account at the viewed step (simulated time, ksmd CPU, batches)."""
        now, cpu, batches = self.branch.times[self.step]
        return TimeAccount(now_ns=now, cpu_ns=cpu, batches=batches)

    def story(self) -> dict[str, int]:
        """Where the scenario is, known from the start, and what ksmd cost so far:

        - ``pos``, the scenario steps done (a ``scan`` counts once it has started), and
          ``steps`` their number;
        - ``time_ns``, ``cpu_ns``, ``batches``: the running :class:`sim.timemodel.TimeAccount`
          (every ksmd batch charged with :func:`sim.timemodel.batch_cost`, as the sweep does);
        - ``saved_bytes``: memory saved, the kernel's ``general_profit`` (``(pages_sharing +
          ksm_zero_pages) x 4096 - rmap_items x 64``); on 6.1, which has no such file, the
          same formula without ksm_zero_pages (as the sweep reports it).
        """
        st = self.stepper
        k = st.kernel
        now, cpu, batches = self.branch.times[self.step]
        profit = k.global_counters()["general_profit"]
        if profit is None:
            profit = k.pages_sharing * PAGE_SIZE - k.ksm_rmap_items * RMAP_ITEM_SIZE
        return {
            "pos": st.pos,
            "steps": len(st.steps),
            "time_ns": now,
            "cpu_ns": cpu,
            "batches": batches,
            "saved_bytes": int(profit),
        }

    def chapters(self) -> list[dict[str, Any]]:
        """The scenario's steps a talk is told by: checkpoints and every op but ``scan``."""
        out = []
        for i, step in enumerate(self.stepper.steps):
            if step.op == "scan":
                continue
            name = step.name if step.op == "checkpoint" else None
            out.append({"at": i, "op": step.op, "name": name})
        return out


def _counters(k: Kernel) -> CounterRow:
    stats = {name: tuple(k.ksm_stat(name).values()) for name in k.procs}
    return tuple(k.global_counters().values()), stats


def _records_checkpoint(st: Stepper, action: Action) -> bool:
    """Will this action record a scenario checkpoint (a copy of the kernel's state)?"""
    if isinstance(action, Next):
        up = st.upcoming
        return up is not None and up.op == "checkpoint"
    step = getattr(action, "step", None)
    return step is not None and getattr(step, "op", None) == "checkpoint"


def _object_bytes(cp: dict[str, Any]) -> int:
    """Rough memory of a recorded checkpoint: its compact JSON (measured: tracemalloc
    finds about as many bytes as the JSON has characters)."""
    return len(json.dumps(cp, separators=(",", ":"), default=str))


def estimate_bytes(k: Kernel) -> int:
    """Rough size of one kernel clone (for the checkpoint budget)."""
    pages = sum(v.npages for mm in k.procs.values() for v in mm.regions)
    return 16_384 + pages * 40 + len(k.f_map) * 24 + len(k.nodes) * 400 + len(k.unstable) * 120
