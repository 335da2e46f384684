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


# ------------------------------------------------------------------------------- the house
ROOT = SIM.parent

#: the floors of the house, lowest first: a module may import its own floor and the floors
#: below, never one above (the first matching prefix names a module's floor)
FLOORS: tuple[tuple[str, int], ...] = (
    ("sim", 0),
    ("app.kernel", 1),
    ("app.config", 1),
    ("app.origin", 1),
    ("app.whatif", 2),
    ("app.live", 2),
    ("app.server", 3),
    ("app.cli", 4),
    ("app", 4),  # the package itself
)


def _floor(module: str) -> int:
    for prefix, floor in FLOORS:
        if module == prefix or module.startswith(prefix + "."):
            return floor
    raise AssertionError(f"{module} stands on no floor of the house: add it to FLOORS")


def _modules() -> dict[str, Path]:
    out = {}
    for top in ("sim", "app"):
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``module`` imports (at any depth of the file, TYPE_CHECKING too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in targets:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def test_the_house_has_no_import_circle() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            # a package importing its own submodules (its __init__ re-exporting) is no circle
            parents = [c for c in comp if all(o == c or o.startswith(c + ".") for o in comp)]
            if len(comp) > 1 and not parents:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == []


def test_no_arrow_runs_up_a_floor() -> None:
    up = [
        f"{a} (floor {_floor(a)}) imports {b} (floor {_floor(b)})"
        for a, targets in _graph().items()
        for b in targets
        if _floor(b) > _floor(a)
    ]
    assert up == []


def test_app_kernel_uses_the_standard_library_and_sim_only() -> None:
    stdlib = set(sys.stdlib_module_names)
    for path in (ROOT / "app" / "kernel").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                ok = top in stdlib or top == "sim" or name.startswith("app.kernel")
                assert ok, f"{path.relative_to(ROOT)} imports {name}"


def test_the_live_view_uses_no_server_internals() -> None:
    for name, targets in _graph().items():
        if name.startswith("app.live"):
            assert not [t for t in targets if t.startswith("app.server")], name
