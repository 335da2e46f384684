"""The simulator stays pure: standard library only, never importing the app layer."""

from __future__ import annotations

import ast
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
