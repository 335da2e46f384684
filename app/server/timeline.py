"""A session's timeline: recorded actions, branches, sparse kernel checkpoints, replay.

Step 0 is the kernel after the scenario's knobs; step ``k`` is the state after ``k`` actions:

- ``("next", grain)``: what comes next (``docs/protocol.md`` section 1): a batch (page, pass)
  of a scenario ``scan`` in progress, else the next scenario step, else a ksmd batch if ksmd
  would run; nothing at all means the timeline is at its end;
- ``("inject", step dict)``: a scenario op applied now;
- ``("knob", name, value)``: a sysfs write.

The simulator is deterministic, so a step is recomputed from the nearest earlier checkpoint
(a :meth:`sim.Kernel.clone`, kept every ``interval`` steps and thinned to fit a memory
budget) by replaying the recorded actions. An action added while viewing a past step starts
a new :class:`Branch`; the old one stays reachable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sim import Kernel, KnobError, SimError
from sim.changes import ChangeLog
from sim.scenario import Scenario, Step, parse_scenario

Action = tuple[Any, ...]
CounterRow = tuple[tuple[int | None, ...], dict[str, tuple[Any, ...]]]


class LimitError(Exception):
    """A configured limit or an impossible request (names the field)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass
class Machine:
    """A kernel plus where the scenario is: next step, and the end of a ``scan`` in progress."""

    kernel: Kernel
    pos: int = 0
    scan_until: int | None = None

    def clone(self) -> Machine:
        return Machine(self.kernel.clone(), self.pos, self.scan_until)


@dataclass
class StepResult:
    step: int
    action: str
    log: ChangeLog
    checkpoint: str | None = None


@dataclass
class Branch:
    id: int
    parent: int | None
    base: int
    actions: list[Action] = field(default_factory=list)
    checkpoints: dict[int, Machine] = field(default_factory=dict)
    trace: dict[int, dict[str, Any]] = field(default_factory=dict)
    counters: list[CounterRow] = field(default_factory=list)

    @property
    def head(self) -> int:
        return len(self.actions)

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "parent": self.parent, "base_step": self.base, "head": self.head}


def op_text(raw: dict[str, Any]) -> str:
    """A scenario step in a few words: ``write A heap[0-99] 'zero'``."""
    op = raw.get("op")
    where = " ".join(str(raw[f]) for f in ("proc", "vma") if f in raw)
    if "pages" in raw and op != "mmap":
        where += f"[{raw['pages']}]"
    rest = []
    for f in ("child", "content", "advice", "value", "passes", "name"):
        if f in raw:
            rest.append(repr(raw[f]) if f in ("content", "name") else str(raw[f]))
    if op == "mmap":
        rest.append(f"{raw.get('pages')} pages")
    if op == "sysfs":
        return f"sysfs {raw.get('knob')}={raw.get('value')}"
    return " ".join(p for p in (str(op), where, *rest) if p)


def validate_op(k: Kernel, raw: Any) -> Step:
    """Check one op with the scenario rules against the kernel's live processes and mappings.

    Raises :class:`sim.ScenarioError` whose ``field`` names the bad field.
    """
    prefix: list[dict[str, Any]] = []
    for name, mm in k.procs.items():
        prefix.append({"op": "spawn", "proc": name})
        for v in mm.vmas.values():
            prefix.append({"op": "mmap", "proc": name, "vma": v.name, "pages": v.npages})
    doc = {"kernel": k.version, "steps": [*prefix, raw]}
    try:
        scenario = parse_scenario(doc)
    except SimError as exc:
        if getattr(exc, "step", None) == len(prefix):
            exc.step = None  # type: ignore[attr-defined]
        raise
    return scenario.steps[-1]


class Timeline:
    """Recorded actions on branches, with sparse checkpoints (see the module docstring)."""

    def __init__(
        self,
        scenario: Scenario,
        machine: Machine,
        *,
        interval: int = 32,
        memory_bytes: int = 256 << 20,
        max_steps: int = 1_000_000,
        max_branches: int = 64,
    ):
        self.scenario = scenario
        self.steps = scenario.steps
        self.interval = interval
        self.memory_bytes = memory_bytes
        self.max_steps = max_steps
        self.max_branches = max_branches
        machine.kernel.take_changes()
        root = Branch(0, None, 0)
        root.checkpoints[0] = machine.clone()
        root.counters.append(_counters(machine.kernel))
        self.branches = [root]
        self.branch = root
        self.machine = machine
        self.step = 0

    @property
    def kernel(self) -> Kernel:
        return self.machine.kernel

    @property
    def head(self) -> int:
        return self.branch.head

    # ----------------------------------------------------------------- actions
    def at_end(self) -> bool:
        """Nothing more can happen from here without a control (and no recorded step ahead)."""
        if self.step < self.head:
            return False
        m = self.machine
        return not (m.scan_until is not None or m.pos < len(self.steps) or m.kernel.ksmd_should_run)

    def forward(self, grain: str = "batch") -> StepResult | None:
        """One step forward: replays the recorded step, or computes a new one at the head."""
        if self.step < self.head:
            action = self.branch.actions[self.step]
        else:
            if self.head >= self.max_steps:
                raise LimitError("max_timeline_steps", f"the branch reached {self.max_steps} steps")
            action = ("next", grain)
        return self._do(action)

    def act(self, action: Action) -> StepResult:
        """Apply an injected op or a knob write now (forking the timeline at a past step)."""
        if self.step < self.head and len(self.branches) >= self.max_branches:
            raise LimitError("max_branches", f"at most {self.max_branches} branches")
        res = self._do(action, fork=True)
        assert res is not None
        return res

    def _do(self, action: Action, fork: bool = False) -> StepResult | None:
        m = self.machine
        done = _execute(m, action, self.steps)
        if done is None:
            return None
        text, ckpt = done
        log = m.kernel.take_changes()
        if fork and self.step < self.head:
            self._fork_branch()
        self.step += 1
        b = self.branch
        if self.step > b.head:
            b.actions.append(action)
            b.counters.append(_counters(m.kernel))
            if ckpt is not None:
                b.trace[self.step] = m.kernel.checkpoint(ckpt)
        self._maybe_checkpoint(b, self.step, m)
        return StepResult(self.step, text, log, ckpt)

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
        )
        self.branches.append(new)
        self.branch = new

    def _maybe_checkpoint(self, b: Branch, step: int, m: Machine) -> None:
        if step % self.interval or step in b.checkpoints:
            return
        b.checkpoints[step] = m.clone()
        budget = max(2, self.memory_bytes // max(1, estimate_bytes(m.kernel)))
        while len(b.checkpoints) > budget:
            keys = sorted(b.checkpoints)
            for key in keys[1:-1:2]:  # keep step 0 and the newest
                del b.checkpoints[key]
            if len(keys) <= 3:
                break

    # -------------------------------------------------------------------- moves
    def seek(self, step: int, branch: int | None = None) -> StepResult | None:
        """View ``step`` of a branch (default: the current one); returns its last step's result."""
        b = self.branch if branch is None else self._branch(branch)
        if not 0 <= step <= b.head:
            raise LimitError("step", f"step {step} is outside branch {b.id} (0..{b.head})")
        base = max(s for s in b.checkpoints if s <= step)
        if b is self.branch and base <= self.step <= step:
            m, at = self.machine, self.step
        else:
            m, at = b.checkpoints[base].clone(), base
        last = None
        while at < step:
            done = _execute(m, b.actions[at], self.steps)
            assert done is not None, "replay diverged"
            at += 1
            last = StepResult(at, done[0], m.kernel.take_changes(), done[1])
            self._maybe_checkpoint(b, at, m)
        self.machine, self.branch, self.step = m, b, step
        return last

    def machine_at(self, step: int) -> Machine:
        """An independent copy of the machine at ``step`` of the current branch."""
        if not 0 <= step <= self.head:
            raise LimitError("step", f"step {step} is outside 0..{self.head}")
        b = self.branch
        if step == self.step:
            return self.machine.clone()
        base = max(s for s in b.checkpoints if s <= step)
        m = b.checkpoints[base].clone()
        for at in range(base, step):
            _execute(m, b.actions[at], self.steps)
            m.kernel.take_changes()
        return m

    def _branch(self, branch: int) -> Branch:
        if not 0 <= branch < len(self.branches):
            raise LimitError("branch", f"no branch {branch} (0..{len(self.branches) - 1})")
        return self.branches[branch]

    # ------------------------------------------------------------------ exports
    def trace_checkpoints(self) -> list[dict[str, Any]]:
        return [cp for s, cp in sorted(self.branch.trace.items()) if s <= self.step]

    def counter_rows(self) -> list[CounterRow]:
        return self.branch.counters[: self.step + 1]


# --------------------------------------------------------------------- execution
def _execute(m: Machine, action: Action, steps: tuple[Step, ...]) -> tuple[str, str | None] | None:
    kind = action[0]
    k = m.kernel
    if kind == "knob":
        k.sysfs_write(action[1], action[2])
        return f"sysfs {action[1]}={action[2]}", None
    if kind == "inject":
        step = action[1]
        return _scenario_step(m, step, "batch")
    grain = action[1]
    if m.scan_until is not None:
        return _ksmd(m, grain), None
    if m.pos < len(steps):
        step = steps[m.pos]
        m.pos += 1
        return _scenario_step(m, step, grain)
    if k.ksmd_should_run:
        return _ksmd(m, grain), None
    return None


def _scenario_step(m: Machine, step: Step, grain: str) -> tuple[str, str | None]:
    k = m.kernel
    text = op_text(step.raw)
    if step.op == "checkpoint":
        return f"checkpoint {step.name!r}", step.name or ""
    if step.op == "scan":
        m.scan_until = k.seqnr + (step.passes or 0)
        k.knobs["run"] = 1
        return f"{text}: {_ksmd(m, grain)}", None
    if step.op == "sysfs" and step.knob not in k.profile.knobs:
        return f"{text}: skipped, kernel {k.version} has no such knob", None
    try:
        k.apply(step)
    except KnobError as exc:
        return f"{text}: rejected, {exc.errno}: {exc.reason}", None
    except SimError as exc:
        return f"{text}: failed: {exc}", None
    return text, None


def _ksmd(m: Machine, grain: str) -> str:
    k = m.kernel
    if grain == "pass":
        k.scan_pass()
        text = "ksmd ran to the end of the pass"
    else:
        n = k.scan_page() if grain == "page" else k.scan_batch()
        # a batch that starts after the last page only finds that the pass is over
        text = (
            f"ksmd scanned {n} page{'s' if n != 1 else ''}"
            if n
            else "ksmd found no page left in this pass"
        )
    if m.scan_until is not None and (k.seqnr >= m.scan_until or (not k.slots and k.cursor is None)):
        k.knobs["run"] = 0
        m.scan_until = None
    return text


def _counters(k: Kernel) -> CounterRow:
    stats = {name: tuple(k.ksm_stat(name).values()) for name in k.procs}
    return tuple(k.global_counters().values()), stats


def estimate_bytes(k: Kernel) -> int:
    """Rough size of one kernel clone (for the checkpoint budget)."""
    pages = sum(v.npages for mm in k.procs.values() for v in mm.regions)
    return 16_384 + pages * 40 + len(k.f_map) * 24 + len(k.nodes) * 400 + len(k.unstable) * 120
