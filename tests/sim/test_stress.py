"""A CI-sized run of bench/stress.py: thousands of random sequences, invariants after
every step, zero violations (the manual run uses --sequences 100000)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "stress.py"


def test_random_sequences_preserve_contents_and_counters() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--sequences", "3000", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3000 sequences" in out.stdout and " 0 violations" in out.stdout
