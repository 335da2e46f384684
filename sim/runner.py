"""Run a scenario in the simulator and produce its ``ksm-trace/1`` trace."""

from __future__ import annotations

from typing import Any

from .errors import KnobError, UnsupportedError
from .kernel import Kernel
from .scenario import Scenario

SOURCE_PREFIX = "ksmlab-sim"


def check_supported(scenario: Scenario, kernel: str) -> None:
    """Refuse, before anything runs, a scenario the kernel cannot run (prctl on 6.1)."""
    if kernel == "6.1":
        for step in scenario.steps:
            if step.op == "prctl":
                raise UnsupportedError(
                    "prctl(PR_SET_MEMORY_MERGE) is unsupported on kernel 6.1", step.index
                )


def run_scenario(
    scenario: Scenario, kernel: str | None = None, check: bool = False
) -> dict[str, Any]:
    """Run every step; ``check=True`` runs the invariant checker after each step."""
    version = kernel or scenario.kernel
    check_supported(scenario, version)
    k = Kernel(version, scenario.sysfs)
    step_errors: list[dict[str, Any]] = []
    skipped = list(k.skipped_knobs)
    checkpoints = []
    for step in scenario.steps:
        if step.op == "checkpoint":
            checkpoints.append(k.checkpoint(step.name or ""))
            continue
        if step.op == "sysfs" and step.knob not in k.profile.knobs:
            skipped.append(step.knob or "")
            continue
        try:
            k.apply(step)
        except KnobError as exc:
            step_errors.append(
                {"step": step.index, "knob": exc.knob, "errno": exc.errno, "error": exc.reason}
            )
        if check:
            from .invariants import check_invariants

            check_invariants(k)
    return {
        "format": "ksm-trace/1",
        "scenario": scenario.name,
        "source": f"{SOURCE_PREFIX} {version}",
        "checkpoints": checkpoints,
        "meta": {"kernel": version, "skipped_knobs": skipped, "step_errors": step_errors},
    }
