"""Run a scenario in the simulator and produce its ``ksm-trace/1`` trace.

:func:`run_scenario` drives a :class:`~sim.stepper.Stepper` through the scenario's steps,
each ``scan N`` pass by pass (the same state as N whole passes at once).
"""

from __future__ import annotations

from typing import Any

from .errors import KnobError, UnsupportedError
from .kernel import Kernel
from .profiles import get_profile
from .scenario import Scenario
from .stepper import Next, Stepper

SOURCE_PREFIX = "ksmlab-sim"


def check_supported(scenario: Scenario, kernel: str) -> None:
    """Refuse, before anything runs, a scenario the kernel cannot run (prctl before 6.4)."""
    if not get_profile(kernel).has_prctl:
        for step in scenario.steps:
            if step.op == "prctl":
                raise UnsupportedError(
                    f"prctl(PR_SET_MEMORY_MERGE) is unsupported on kernel {kernel}", step.index
                )


def run_scenario(
    scenario: Scenario, kernel: str | None = None, check: bool = False
) -> dict[str, Any]:
    """Run every step; ``check=True`` runs the invariant checker after each step.

    An op the kernel refuses raises its :class:`~sim.errors.SimError`, except a knob write,
    which is recorded in ``meta.step_errors`` (a knob this kernel lacks: ``skipped_knobs``).
    """
    version = kernel or scenario.kernel
    check_supported(scenario, version)
    k = Kernel(version, scenario.sysfs)
    stepper = Stepper(k, scenario.steps)
    step_errors: list[dict[str, Any]] = []
    skipped = list(k.skipped_knobs)
    checkpoints = []
    while stepper.in_scenario:
        out = stepper.feed(Next("pass"))
        assert out is not None  # a scenario step or a pass of its scan is always next
        if out.checkpoint is not None:
            checkpoints.append(k.checkpoint(out.checkpoint))
            continue
        result = out.what.get("result")
        if result == "skipped":
            skipped.append(out.what.get("knob") or "")
            continue
        if isinstance(out.error, KnobError):
            exc = out.error
            step_errors.append(
                {
                    "step": out.what["step"],
                    "knob": exc.knob,
                    "errno": exc.errno,
                    "error": exc.reason,
                }
            )
        elif out.error is not None:
            raise out.error
        if check and not stepper.scanning:
            from .invariants import check_invariants

            check_invariants(k)
    return {
        "format": "ksm-trace/1",
        "scenario": scenario.name,
        "source": f"{SOURCE_PREFIX} {version}",
        "checkpoints": checkpoints,
        "meta": {"kernel": version, "skipped_knobs": skipped, "step_errors": step_errors},
    }
