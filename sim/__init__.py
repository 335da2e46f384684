"""KSM Lab simulator: Linux KSM (Kernel Samepage Merging) as the kernel really behaves.

DOC: Overview

A deterministic, standard-library-only model of ``mm/ksm.c`` and the page-table events
around it, for the kernel profiles "6.18" (default), "6.12", "6.5" (before the zero-page
series) and "6.1" (see ``sim.profiles``). No I/O, no clock, no asyncio.

- :class:`Kernel`: one simulated machine: processes, mappings, PTEs, frames, ksmd, trees,
  counters; scenario ops as methods; ksmd stepping by page, batch or pass.
- :func:`load_scenario` / :func:`parse_scenario`: ``ksm-scenario/1`` documents.
- :class:`Stepper` (``sim.stepper``): what comes next, sans I/O: a kernel plus where a
  scenario is, fed typed actions (:class:`Next`, :class:`Inject`, :class:`WriteKnob`), each
  returning an :class:`Outcome` (a sentence and the same facts structured).
- :func:`run_scenario`: a scenario in, a ``ksm-trace/1`` trace out (drives a stepper).
- ``sim.presets``: the preset library (the stories in ``sim/presets/*.json``).
- :func:`compare_traces`: the differences between two traces (empty when they agree).
- :func:`check_invariants`: the structural checker tests run after every step.
- ``sim.snapshot``: read-only views for front ends (page kinds, structure, page detail
  with "why is this page not merged (yet)?", events with their kernel paths).

Layers, bottom up: ``state`` (frames, counters), ``stable`` (stable tree, chains),
``scanner`` (ksmd, smart scan, cmp_and_merge_page), ``process`` (fork, write, madvise...),
``knobs`` (sysfs), ``kernel`` (the facade), ``stepper`` (scenarios step by step).
"""

from .errors import (
    InvariantError,
    KnobError,
    OpError,
    ScenarioError,
    SimError,
    UnsupportedError,
)
from .invariants import check_invariants
from .kernel import Kernel
from .profiles import PROFILES, get_profile
from .runner import run_scenario
from .scenario import Scenario, Step, load_scenario, parse_pages, parse_scenario
from .stepper import Inject, Next, Outcome, Stepper, WriteKnob
from .trace import compare_traces, load_trace

__all__ = [
    "PROFILES",
    "Inject",
    "InvariantError",
    "Kernel",
    "KnobError",
    "Next",
    "OpError",
    "Outcome",
    "Scenario",
    "ScenarioError",
    "SimError",
    "Step",
    "Stepper",
    "UnsupportedError",
    "WriteKnob",
    "check_invariants",
    "compare_traces",
    "get_profile",
    "load_scenario",
    "load_trace",
    "parse_pages",
    "parse_scenario",
    "run_scenario",
]
