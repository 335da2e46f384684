"""What comes next: the scenario stepper, sans I/O.

A :class:`Stepper` holds a :class:`~sim.kernel.Kernel` and where a scenario is (its next step,
the end of a ``scan`` in progress). It is fed typed actions and returns what happened, in the
spirit of the websockets library's protocol objects: no clocks, no sockets, no threads. The
dashboard's timeline (``app.server.timeline``), the what-if sweep (``app.whatif.sweep``),
shared links (``app.server.share``) and :func:`sim.run_scenario` all drive it.

The actions (this module's public contract; ``docs/protocol.md`` section 1 gives the rules):

- :class:`Next`: what comes next, by ``grain`` (``"page"``, ``"batch"``, ``"pass"``), first
  that applies: a batch (page, pass) of a scenario ``scan`` in progress; else the next
  scenario step (one step each; a ``scan N`` step starts ksmd, ``run=1``, and runs its first
  batch, and ksmd stops, ``run=0``, when the N-th pass since then completes or no mm is left
  to scan); else a ksmd batch if ksmd would run (``run=1`` and an mm registered); nothing at
  all (``feed`` returns None) means the stepper is at its end;
- :class:`Inject`: a scenario op applied now (an already validated :class:`~sim.scenario.Step`,
  see :func:`validate_op`); an injected ``scan`` starts a scan as a scenario one does
  (its first batch by ``"batch"``);
- :class:`WriteKnob`: a sysfs write (a bad value raises :class:`~sim.errors.KnobError` and
  changes nothing).

Each action that happened returns an :class:`Outcome`: ``text``, a short sentence (the
dashboard shows it and tests read it: ``"write A heap[0-99] 'zero'"``, ``"scan 1: ksmd
scanned 100 pages"``, ``"ksmd found no page left in this pass"``), ``checkpoint`` (the name
of a scenario ``checkpoint`` step, else None), ``error`` (the :class:`~sim.errors.SimError`
an op raised, for callers that stop on errors; never on the wire) and ``what``, the same
facts structured so that no front end parses the sentence:

- an op (scenario or injected): ``{"kind": "op", "op", "proc", "child", "vma", "pages",
  "count", "content", "advice", "value", "knob", "passes", "result", "errno", "reason",
  "step"}``, each key present when it applies: ``pages`` as ``[[start, stop), ...]`` (absent:
  the whole mapping), ``count`` the pages of an ``mmap``, ``result`` one of ``"ok"``,
  ``"rejected"`` (a knob write the kernel refused: ``errno`` such as ``"EINVAL"`` and
  ``reason``), ``"skipped"`` (a ``sysfs`` knob this kernel lacks: ``reason``) or ``"failed"``
  (``reason``), and ``step`` the index of a scenario step (injected ops have none). A
  ``scan`` op also carries the ksmd facts of its first batch (``grain``, ``scanned``,
  ``pass_end``);
- a knob write: ``{"kind": "knob", "knob", "value", "result": "ok"}``;
- ksmd: ``{"kind": "ksmd", "grain", "scanned": pages handed over, "pass_end": bool}``
  (``pass_end``: a full pass completed, ``full_scans`` advanced);
- a scenario checkpoint: ``{"kind": "checkpoint", "name", "step"}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import KnobError, SimError
from .kernel import PASS_INTERVAL_MS, Kernel
from .scenario import Step, parse_scenario

Grain = Literal["batch", "page", "pass"]
GRAINS: tuple[Grain, ...] = ("batch", "page", "pass")


@dataclass(frozen=True)
class Next:
    """What comes next, ``grain`` deciding how much ksmd does if it is ksmd's turn."""

    grain: Grain = "batch"


@dataclass(frozen=True)
class Inject:
    """A scenario op applied now."""

    step: Step


@dataclass(frozen=True)
class WriteKnob:
    """``echo value > /sys/kernel/mm/ksm/knob``."""

    knob: str
    value: int | str


Action = Next | Inject | WriteKnob


@dataclass(frozen=True)
class Outcome:
    """What one action did: a sentence, and the same facts structured for front ends.

    ``what`` never needs parsing: ``kind`` is one of ``"op"`` (a scenario or injected op),
    ``"knob"``, ``"ksmd"`` (a page, batch or pass of ksmd), ``"checkpoint"``; the other keys
    are the facts of that kind (``op``, ``proc``, ``vma``, ``pages`` as ``[[start, stop)]``,
    ``knob``, ``value``, ``grain``, ``scanned``, ``result`` of ``"ok"``, ``"rejected"``,
    ``"skipped"``, ``"failed"`` with ``errno``/``reason``, ``checkpoint`` name, ...; the
    module docstring lists them). ``error`` is the exception a rejected or failed op raised.
    """

    text: str
    what: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    error: SimError | None = field(default=None, compare=False, repr=False)


class Stepper:
    """A kernel plus where the scenario is: its next step, and the end of a ``scan``.

    ``steps`` are the scenario's steps (shared, never copied, by :meth:`clone`); ``pos`` is
    the index of the next one; ``scan_until`` the ``full_scans`` value at which the ``scan``
    in progress ends (None: no scan in progress).
    """

    def __init__(
        self,
        kernel: Kernel,
        steps: Sequence[Step] = (),
        *,
        pos: int = 0,
        scan_until: int | None = None,
    ):
        self.kernel = kernel
        self.steps: tuple[Step, ...] = tuple(steps)
        self.pos = pos
        self.scan_until = scan_until

    def clone(self) -> Stepper:
        """An independent copy (the kernel is cloned; the steps are shared)."""
        return Stepper(self.kernel.clone(), self.steps, pos=self.pos, scan_until=self.scan_until)

    # ------------------------------------------------------------------ where
    @property
    def scanning(self) -> bool:
        """A scenario ``scan`` is in progress."""
        return self.scan_until is not None

    @property
    def in_scenario(self) -> bool:
        """Scenario steps are left, or a scenario ``scan`` is in progress."""
        return self.scan_until is not None or self.pos < len(self.steps)

    @property
    def upcoming(self) -> Step | None:
        """The scenario step the next :class:`Next` applies (None: a scan first, or none left)."""
        if self.scan_until is not None or self.pos >= len(self.steps):
            return None
        return self.steps[self.pos]

    @property
    def at_end(self) -> bool:
        """Nothing can happen from here without an injected op or a knob write."""
        return not (self.in_scenario or self.kernel.ksmd_should_run)

    # ----------------------------------------------------------------- actions
    def feed(self, action: Action) -> Outcome | None:
        """Apply one action; None when it is a :class:`Next` and nothing can happen."""
        k = self.kernel
        if isinstance(action, WriteKnob):
            k.sysfs_write(action.knob, action.value)
            what = {"kind": "knob", "knob": action.knob, "value": action.value, "result": "ok"}
            # the value as the kernel took it ("0007" is 7; 5,000 leading zeros are not shown)
            return Outcome(f"sysfs {action.knob}={k.knobs.get(action.knob, action.value)}", what)
        if isinstance(action, Inject):
            return self._scenario_step(action.step, "batch", scenario=False)
        grain = action.grain
        if self.scan_until is not None:
            text, what = self._ksmd(grain)
            return Outcome(text, what)
        if self.pos < len(self.steps):
            step = self.steps[self.pos]
            self.pos += 1
            return self._scenario_step(step, grain, scenario=True)
        if k.ksmd_should_run:
            text, what = self._ksmd(grain)
            return Outcome(text, what)
        return None

    def _scenario_step(self, step: Step, grain: Grain, scenario: bool) -> Outcome:
        k = self.kernel
        if step.op == "checkpoint":
            name = step.name or ""
            what: dict[str, Any] = {"kind": "checkpoint", "name": name}
            if scenario:
                what["step"] = step.index
            return Outcome(f"checkpoint {step.name!r}", what, name)
        text = op_text(step.raw)
        what = op_facts(step)
        if scenario:
            what["step"] = step.index
        if step.op == "scan":
            self.scan_until = k.seqnr + (step.passes or 0)
            k.start_scan()
            ksmd_text, facts = self._ksmd(grain)
            del facts["kind"]
            what.update(result="ok", **facts)
            return Outcome(f"{text}: {ksmd_text}", what)
        if step.op == "sysfs" and step.knob not in k.profile.knobs:
            reason = f"kernel {k.version} has no such knob"
            what.update(result="skipped", reason=reason)
            return Outcome(f"{text}: skipped, {reason}", what)
        try:
            k.apply(step)
        except KnobError as exc:
            what.update(result="rejected", errno=exc.errno, reason=exc.reason)
            return Outcome(f"{text}: rejected, {exc.errno}: {exc.reason}", what, error=exc)
        except SimError as exc:
            what.update(result="failed", reason=str(exc))
            return Outcome(f"{text}: failed: {exc}", what, error=exc)
        what["result"] = "ok"
        return Outcome(text, what)

    def _ksmd(self, grain: Grain) -> tuple[str, dict[str, Any]]:
        """One page, batch or pass of ksmd; ends the ``scan`` in progress when it is done."""
        k = self.kernel
        seq0 = k.seqnr
        if grain == "pass":
            scanned0 = k.pages_scanned
            k.scan_pass()
            n = k.pages_scanned - scanned0
            text = "ksmd ran to the end of the pass"
        else:
            n = k.scan_page() if grain == "page" else k.scan_batch()
            # a batch that starts after the last page only finds that the pass is over
            text = (
                f"ksmd scanned {n} page{'s' if n != 1 else ''}"
                if n
                else "ksmd found no page left in this pass"
            )
        if self.scan_until is not None:
            # the format's clock: in a scan step, consecutive passes start 200 ms apart
            for _ in range(k.seqnr - seq0):
                k.advance_clock(PASS_INTERVAL_MS)
            if k.seqnr >= self.scan_until or not k.can_scan:
                k.stop_scan()
                self.scan_until = None
        return text, {"kind": "ksmd", "grain": grain, "scanned": n, "pass_end": k.seqnr != seq0}


# ----------------------------------------------------------------------- ops
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


_FACTS = ("proc", "child", "vma", "count", "content", "advice", "value", "knob", "passes")


def op_facts(step: Step) -> dict[str, Any]:
    """The structured facts of an op (``Outcome.what`` without its result)."""
    what: dict[str, Any] = {"kind": "op", "op": step.op}
    for name in _FACTS:
        value = getattr(step, name)
        if value is not None:
            what[name] = value
    if step.pages is not None:
        what["pages"] = [[start, stop] for start, stop in step.pages]
    return what


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
