"""The simulator stays pure: standard library only, never importing the app layer."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

SIM = Path(__file__).resolve().parents[2] / "sim"
FORBIDDEN = ("app", "fastapi", "pydantic", "jinja2", "starlette", "uvicorn", "plotly")


def test_sim_modules_import_only_the_standard_library() -> None:
    stdlib = set(sys.stdlib_module_names)
    for path in SIM.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "yaml":  # optional, only for YAML scenario files
                    continue
                assert top in stdlib, f"{path.name} imports {name}"


def test_importing_sim_loads_no_third_party_module() -> None:
    code = (
        "import sys, sim, sim.snapshot, sim.cli\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=SIM.parent, check=True
    )
    assert out.stdout.strip() == "[]"


def test_only_sim_drives_ksmd_and_reads_its_cursor() -> None:
    """Outside ``sim`` ksmd is started and stopped by the stepper (``Kernel.start_scan``...):
    no one writes ``knobs["run"]`` directly or reads ksmd's ``cursor``/``slots``."""
    root = SIM.parent
    bad = re.compile(r"""\.(cursor|slots)\b|knobs\[["']run["']\]\s*=[^=]""")
    found = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for top in ("app", "bench")
        for path in sorted((root / top).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if bad.search(line)
    ]
    assert found == []
