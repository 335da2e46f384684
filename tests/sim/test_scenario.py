"""Scenario parsing: every malformed document is refused with the step index and field."""

from __future__ import annotations

from typing import Any

import pytest

from sim import ScenarioError, parse_pages, parse_scenario


def doc(*steps: dict[str, Any], **top: Any) -> dict[str, Any]:
    base = [{"op": "spawn", "proc": "A"}, {"op": "mmap", "proc": "A", "vma": "m", "pages": 10}]
    return {"format": "ksm-scenario/1", "name": "t", "steps": base + list(steps), **top}


def test_page_selections() -> None:
    assert parse_pages(3, 10) == ((3, 4),)
    assert parse_pages("2-4", 10) == ((2, 5),)
    assert parse_pages(["0-1", 5, "1-2"], 10) == ((0, 3), (5, 6))


@pytest.mark.parametrize("spec", ["4-2", "a", -1, "10", [], True, 1.5])
def test_bad_page_selections(spec: Any) -> None:
    with pytest.raises(ScenarioError) as exc:
        parse_pages(spec, 10)
    assert exc.value.field == "pages"


@pytest.mark.parametrize(
    ("step", "field"),
    [
        ({"op": "jump"}, "op"),
        ({"op": "write", "proc": "A", "vma": "m"}, "content"),
        ({"op": "write", "proc": "B", "vma": "m", "content": "X"}, "proc"),
        ({"op": "write", "proc": "A", "vma": "n", "content": "X"}, "vma"),
        ({"op": "write", "proc": "A", "vma": "m", "content": "X", "pages": "5-12"}, "pages"),
        ({"op": "madvise", "proc": "A", "vma": "m", "advice": "MADV_HUGEPAGE"}, "advice"),
        ({"op": "prctl", "proc": "A", "value": 2}, "value"),
        ({"op": "scan", "passes": 0}, "passes"),
        ({"op": "scan", "passes": "2"}, "passes"),
        ({"op": "mmap", "proc": "A", "vma": "m", "pages": 3}, "vma"),
        ({"op": "spawn", "proc": "A"}, "proc"),
        ({"op": "fork", "proc": "A", "child": "A"}, "child"),
        ({"op": "checkpoint"}, "name"),
        ({"op": "scan", "passes": 1, "extra": 1}, "extra"),
        ({"op": "sysfs", "knob": "run", "value": [1]}, "value"),
    ],
)
def test_bad_steps_name_their_index_and_field(step: dict[str, Any], field: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(doc(step))
    assert (exc.value.step, exc.value.field) == (2, field)
    assert str(exc.value).startswith(f"step 2, field '{field}'")


def test_names_follow_the_timeline() -> None:
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(doc({"op": "exit", "proc": "A"}, {"op": "read", "proc": "A", "vma": "m"}))
    assert (exc.value.step, exc.value.field) == (3, "proc")
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(
            doc({"op": "munmap", "proc": "A", "vma": "m"}, {"op": "read", "proc": "A", "vma": "m"})
        )
    assert (exc.value.step, exc.value.field) == (3, "vma")
    ok = parse_scenario(
        doc(
            {"op": "fork", "proc": "A", "child": "C"},
            {"op": "read", "proc": "C", "vma": "m", "pages": 9},
        )
    )
    assert ok.steps[-1].pages == ((9, 10),)


@pytest.mark.parametrize(
    ("top", "field"),
    [
        ({"kernel": "5.4"}, "kernel"),
        ({"format": "x"}, "format"),
        ({"sysfs": []}, "sysfs"),
        ({"steps": {}}, "steps"),
        ({"sysfs": {"run": None}}, "sysfs.run"),
    ],
)
def test_bad_top_level_fields(top: dict[str, Any], field: str) -> None:
    d = doc()
    d.update(top)
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(d)
    assert exc.value.field == field


def test_kernel_override_is_validated() -> None:
    s = parse_scenario(doc())
    assert s.with_kernel("6.5").kernel == "6.5"
    with pytest.raises(ScenarioError):
        s.with_kernel("6.6")
