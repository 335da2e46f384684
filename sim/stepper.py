"""What comes next: the scenario stepper, sans I/O.

A :class:`Stepper` (to be built here) holds a :class:`~sim.kernel.Kernel` and where a scenario
is (its next step, the end of a ``scan`` in progress). It is fed typed actions and returns what
happened, in the spirit of the websockets library's protocol objects: no clocks, no sockets,
no threads. The dashboard's timeline, the what-if sweep and shared links all drive it.

The actions (this module's public contract; ``docs/protocol.md`` section 1 gives the rules):

- :class:`Next`: what comes next, by ``grain`` (``"page"``, ``"batch"``, ``"pass"``): a
  batch of a scenario ``scan`` in progress, else the next scenario step, else a ksmd batch if
  ksmd would run; nothing at all means the stepper is at its end;
- :class:`Inject`: a scenario op applied now (an already validated :class:`~sim.scenario.Step`);
- :class:`WriteKnob`: a sysfs write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .scenario import Step

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
    ``"skipped"``, ``"failed"`` with ``errno``/``reason``, ``checkpoint`` name, ...).
    """

    text: str
    what: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
