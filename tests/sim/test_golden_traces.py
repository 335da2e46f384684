"""Golden traces: every public scenario, replayed by the simulator, agrees with the real
kernel's trace in every ``traces*/`` folder of the reference material (each folder is
recorded on one kernel, whose profile the simulator runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim import compare_traces, load_scenario, run_scenario
from sim.errors import UnsupportedError
from tests.conftest import shared_dir

FOLDER_PROFILE = {"traces": "6.18"}


def _cases() -> list[tuple[str, str, Path, Path]]:
    root = shared_dir()
    cases = []
    if not (root / "scenarios").is_dir():
        return cases
    for folder in sorted(root.glob("traces*")):
        if not folder.is_dir():
            continue
        profile = FOLDER_PROFILE.get(folder.name, folder.name.removeprefix("traces-"))
        for trace in sorted(folder.glob("*.json")):
            scenario = root / "scenarios" / trace.name
            if scenario.exists():
                cases.append((profile, trace.stem, scenario, trace))
    return cases


CASES = _cases()


def test_reference_traces_are_found() -> None:
    if not (shared_dir() / "scenarios").is_dir():
        pytest.skip("reference material not found")
    profiles = {c[0] for c in CASES}
    assert {"6.18", "6.12", "6.1"} <= profiles
    assert len(CASES) >= 24


@pytest.mark.parametrize(
    ("profile", "name", "scenario", "trace"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_simulator_agrees_with_kernel_trace(
    profile: str, name: str, scenario: Path, trace: Path
) -> None:
    expected = json.loads(trace.read_text())
    try:
        got = run_scenario(load_scenario(scenario), kernel=profile, check=True)
    except UnsupportedError:
        pytest.fail(f"{name} has a {profile} trace but the simulator refuses it")
    assert compare_traces(expected, got) == []


def test_scenarios_without_a_trace_on_an_old_kernel_are_refused() -> None:
    """A scenario recorded on 6.18 but absent from traces-6.1 must use prctl (refused)."""
    root = shared_dir()
    old = root / "traces-6.1"
    if not old.is_dir():
        pytest.skip("no 6.1 traces")
    for scenario in sorted((root / "scenarios").glob("*.json")):
        if not (old / scenario.name).exists():
            with pytest.raises(UnsupportedError):
                run_scenario(load_scenario(scenario), kernel="6.1")
