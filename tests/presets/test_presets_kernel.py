"""Every preset agrees with the real kernel (root, ``KSMLAB_KERNEL_TESTS=1``).

Each preset is replayed on this machine's kernel with the project's replayer, through its
documented command line (``ksmlab replay PATH --trace OUT``, exit 4 = the kernel lacks an
operation, e.g. prctl before 6.4), and the trace must equal the simulator's for the kernel
profile the replayer reports. The replayer saves and restores every KSM knob itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sim import compare_traces, run_scenario
from sim.presets import PRESETS_DIR, load_preset, preset_names

pytestmark = pytest.mark.skipif(
    os.environ.get("KSMLAB_KERNEL_TESTS") != "1",
    reason="kernel tests are opt-in: KSMLAB_KERNEL_TESTS=1 (root, /sys/kernel/mm/ksm)",
)

EXIT_UNSUPPORTED = 4


def profile_of(source: str) -> str:
    """``kernel 6.18.44-...`` -> "6.18" (the simulator profile to compare with)."""
    m = re.search(r"(\d+)\.(\d+)", source)
    assert m, source
    version = f"{m.group(1)}.{m.group(2)}"
    return version if version in ("6.1", "6.5", "6.12") else "6.18"


@pytest.fixture(scope="module", autouse=True)
def _root() -> None:
    if os.geteuid() != 0 or not Path("/sys/kernel/mm/ksm/run").exists():
        pytest.skip("needs root and a kernel with KSM")


@pytest.mark.parametrize("name", preset_names())
def test_preset_agrees_with_kernel(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "replay",
            str(PRESETS_DIR / f"{name}.json"),
            "--trace",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode == EXIT_UNSUPPORTED:
        assert any(s.op == "prctl" for s in load_preset(name).steps), proc.stderr
        pytest.skip(f"{name}: unsupported on this kernel ({proc.stderr.strip()})")
    assert proc.returncode == 0, proc.stderr
    kernel_trace = json.loads(out.read_text())
    sim_trace = run_scenario(load_preset(name, profile_of(kernel_trace["source"])))
    assert compare_traces(kernel_trace, sim_trace) == []
