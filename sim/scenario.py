"""Scenario documents (``ksm-scenario/1``): parsing and validation.

A scenario is a JSON object (see ``shared/scenario-format.md``). :func:`parse_scenario`
checks it completely before anything runs: every step's fields and types, and the names it
uses (a ``write`` to a process that was never spawned, or to page 300 of a 100-page mapping,
is rejected here with the step index and the field), so that a bad file never leaves a
half-written trace. Standard library only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ScenarioError

FORMAT = "ksm-scenario/1"
KERNELS = ("6.18", "6.12", "6.5", "6.1")
DEFAULT_KERNEL = "6.18"

ADVICES = ("MADV_MERGEABLE", "MADV_UNMERGEABLE")

#: fields each op requires (besides ``op``) and the optional ones
OP_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "spawn": (("proc",), ()),
    "fork": (("proc", "child"), ()),
    "exit": (("proc",), ()),
    "mmap": (("proc", "vma", "pages"), ()),
    "munmap": (("proc", "vma"), ()),
    "write": (("proc", "vma", "content"), ("pages",)),
    "read": (("proc", "vma"), ("pages",)),
    "madvise": (("proc", "vma", "advice"), ("pages",)),
    "prctl": (("proc", "value"), ()),
    "sysfs": (("knob", "value"), ()),
    "scan": (("passes",), ()),
    "checkpoint": (("name",), ()),
}

#: upper bounds that keep a scenario file from asking for absurd amounts of memory
MAX_PAGES_PER_MAPPING = 1 << 22
MAX_PASSES = 100_000

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")

Ranges = tuple[tuple[int, int], ...]
"""Half-open page ranges ``(start, stop)``, sorted, non-overlapping."""


@dataclass(frozen=True)
class Step:
    """One scenario step. ``pages`` is resolved to half-open ranges (None: whole mapping)."""

    index: int
    op: str
    proc: str | None = None
    child: str | None = None
    vma: str | None = None
    pages: Ranges | None = None
    count: int | None = None
    content: str | None = None
    advice: str | None = None
    value: Any = None
    knob: str | None = None
    passes: int | None = None
    name: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The step as it appeared in the document."""
        return dict(self.raw)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    kernel: str
    sysfs: dict[str, Any]
    steps: tuple[Step, ...]
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def with_kernel(self, kernel: str) -> Scenario:
        if kernel not in KERNELS:
            raise ScenarioError(
                f"unknown kernel {kernel!r} (known: {', '.join(KERNELS)})", field="kernel"
            )
        raw = dict(self.raw)
        raw["kernel"] = kernel
        return Scenario(self.name, self.description, kernel, dict(self.sysfs), self.steps, raw)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


def parse_pages(spec: Any, count: int, step: int | None = None) -> Ranges:
    """Resolve a page selection (int, ``"a-b"``, list of those) against a mapping size."""
    items = spec if isinstance(spec, list) else [spec]
    if not items:
        raise ScenarioError("empty page selection", step, "pages")
    ranges: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, bool):
            raise ScenarioError(f"bad page selection {item!r}", step, "pages")
        if isinstance(item, int):
            lo, hi = item, item
        elif isinstance(item, str):
            m = _RANGE.match(item)
            if not m:
                raise ScenarioError(f"bad page selection {item!r}", step, "pages")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
        else:
            raise ScenarioError(f"bad page selection {item!r}", step, "pages")
        if lo < 0 or hi < lo:
            raise ScenarioError(f"bad page range {item!r}", step, "pages")
        if hi >= count:
            raise ScenarioError(f"page {hi} is outside the {count}-page mapping", step, "pages")
        ranges.append((lo, hi + 1))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)


def _need(step: dict[str, Any], key: str, index: int, kind: type | tuple[type, ...]) -> Any:
    if key not in step:
        raise ScenarioError("missing", index, key)
    value = step[key]
    if isinstance(value, bool) and kind is not bool:
        raise ScenarioError(f"expected {_kind_name(kind)}, got {value!r}", index, key)
    if not isinstance(value, kind):
        raise ScenarioError(f"expected {_kind_name(kind)}, got {value!r}", index, key)
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return {"str": "a string", "int": "an integer"}.get(kind.__name__, kind.__name__)


def _name(step: dict[str, Any], key: str, index: int) -> str:
    value = _need(step, key, index, str)
    if not value or len(value) > 64:
        raise ScenarioError("must be a non-empty string of at most 64 characters", index, key)
    return str(value)


class _Names:
    """Tracks live processes and their mappings while validating a scenario."""

    def __init__(self) -> None:
        self.procs: dict[str, dict[str, int]] = {}

    def proc(self, name: str, index: int, key: str = "proc") -> dict[str, int]:
        if name not in self.procs:
            raise ScenarioError(f"no live process named {name!r}", index, key)
        return self.procs[name]

    def vma(self, proc: str, vma: str, index: int) -> int:
        maps = self.proc(proc, index)
        if vma not in maps:
            raise ScenarioError(f"process {proc!r} has no mapping named {vma!r}", index, "vma")
        return maps[vma]


def _parse_step(raw: Any, index: int, names: _Names) -> Step:
    if not isinstance(raw, dict):
        raise ScenarioError("a step must be an object", index)
    op = raw.get("op")
    if op not in OP_FIELDS:
        raise ScenarioError(f"unknown op {op!r} (known: {', '.join(OP_FIELDS)})", index, "op")
    required, optional = OP_FIELDS[op]
    for key in raw:
        if key != "op" and key not in required and key not in optional:
            raise ScenarioError(f"unexpected field for op {op!r}", index, key)
    kw: dict[str, Any] = {"index": index, "op": op, "raw": dict(raw)}
    if op == "spawn":
        proc = _name(raw, "proc", index)
        if proc in names.procs:
            raise ScenarioError(f"process {proc!r} already exists", index, "proc")
        names.procs[proc] = {}
        kw["proc"] = proc
    elif op == "fork":
        proc = _name(raw, "proc", index)
        child = _name(raw, "child", index)
        parent = names.proc(proc, index)
        if child in names.procs:
            raise ScenarioError(f"process {child!r} already exists", index, "child")
        names.procs[child] = dict(parent)
        kw.update(proc=proc, child=child)
    elif op == "exit":
        proc = _name(raw, "proc", index)
        names.proc(proc, index)
        del names.procs[proc]
        kw["proc"] = proc
    elif op == "mmap":
        proc = _name(raw, "proc", index)
        vma = _name(raw, "vma", index)
        count = _need(raw, "pages", index, int)
        if not 1 <= count <= MAX_PAGES_PER_MAPPING:
            raise ScenarioError(
                f"page count must be between 1 and {MAX_PAGES_PER_MAPPING}", index, "pages"
            )
        maps = names.proc(proc, index)
        if vma in maps:
            raise ScenarioError(f"process {proc!r} already has a mapping {vma!r}", index, "vma")
        maps[vma] = count
        kw.update(proc=proc, vma=vma, count=count)
    elif op == "munmap":
        proc = _name(raw, "proc", index)
        vma = _name(raw, "vma", index)
        names.vma(proc, vma, index)
        del names.procs[proc][vma]
        kw.update(proc=proc, vma=vma)
    elif op in ("write", "read", "madvise"):
        proc = _name(raw, "proc", index)
        vma = _name(raw, "vma", index)
        count = names.vma(proc, vma, index)
        pages = parse_pages(raw["pages"], count, index) if "pages" in raw else None
        kw.update(proc=proc, vma=vma, pages=pages)
        if op == "write":
            content = _need(raw, "content", index, str)
            if not content:
                raise ScenarioError("content must be a non-empty string", index, "content")
            kw["content"] = content
        if op == "madvise":
            advice = _need(raw, "advice", index, str)
            if advice not in ADVICES:
                raise ScenarioError(
                    f"unknown advice {advice!r} (known: {', '.join(ADVICES)})", index, "advice"
                )
            kw["advice"] = advice
    elif op == "prctl":
        proc = _name(raw, "proc", index)
        names.proc(proc, index)
        value = _need(raw, "value", index, int)
        if value not in (0, 1):
            raise ScenarioError("PR_SET_MEMORY_MERGE takes 0 or 1", index, "value")
        kw.update(proc=proc, value=value)
    elif op == "sysfs":
        knob = _need(raw, "knob", index, str)
        if not re.fullmatch(r"[a-z_]+", knob):
            raise ScenarioError(f"bad knob name {knob!r}", index, "knob")
        value = raw.get("value")
        if not isinstance(value, (int, str)):
            raise ScenarioError(f"expected an integer or a string, got {value!r}", index, "value")
        kw.update(knob=knob, value=value)
    elif op == "scan":
        passes = _need(raw, "passes", index, int)
        if not 1 <= passes <= MAX_PASSES:
            raise ScenarioError(f"passes must be between 1 and {MAX_PASSES}", index, "passes")
        kw["passes"] = passes
    elif op == "checkpoint":
        kw["name"] = _need(raw, "name", index, str)
    return Step(**kw)


def parse_scenario(doc: Any) -> Scenario:
    """Validate a scenario document (already decoded from JSON) and return a :class:`Scenario`."""
    if not isinstance(doc, dict):
        raise ScenarioError("a scenario must be a JSON object")
    fmt = doc.get("format", FORMAT)
    if fmt != FORMAT:
        raise ScenarioError(f"unsupported format {fmt!r} (expected {FORMAT!r})", field="format")
    name = doc.get("name", "scenario")
    if not isinstance(name, str):
        raise ScenarioError("expected a string", field="name")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError("expected a string", field="description")
    kernel = doc.get("kernel", DEFAULT_KERNEL)
    if kernel not in KERNELS:
        raise ScenarioError(
            f"unknown kernel {kernel!r} (known: {', '.join(KERNELS)})", field="kernel"
        )
    sysfs = doc.get("sysfs", {})
    if not isinstance(sysfs, dict):
        raise ScenarioError("expected an object of knob: value", field="sysfs")
    for knob, value in sysfs.items():
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            raise ScenarioError(
                f"knob {knob!r}: expected an integer or a string", field=f"sysfs.{knob}"
            )
    steps_raw = doc.get("steps")
    if not isinstance(steps_raw, list):
        raise ScenarioError("expected a list of steps", field="steps")
    names = _Names()
    steps = tuple(_parse_step(raw, i, names) for i, raw in enumerate(steps_raw))
    return Scenario(name, description, kernel, dict(sysfs), steps, dict(doc))


def load_scenario(source: str | Path | dict[str, Any]) -> Scenario:
    """Load a scenario from a path (JSON; YAML if PyYAML is installed) or a decoded dict."""
    if isinstance(source, dict):
        return parse_scenario(source)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml  # optional: only for YAML scenario files
        except ImportError:  # pragma: no cover - depends on the environment
            raise ScenarioError("YAML scenarios need PyYAML installed") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ScenarioError(f"invalid YAML: {exc}") from None
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScenarioError(f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    return parse_scenario(doc)
