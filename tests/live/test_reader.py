"""app/kernel/host/ksm.py (the live view's reader): the recorded 6.18 tree, the 6.1-shaped one."""

from __future__ import annotations

import builtins
import shutil
from pathlib import Path
from typing import Any

import pytest

from app.kernel.host import ksm as reader

from .conftest import WORKER_PID, Tree

OLD_KERNEL_ABSENT = {
    "general_profit",
    "ksm_zero_pages",
    "pages_scanned",
    "pages_skipped",
    "smart_scan",
    "advisor_mode",
    "advisor_max_cpu",
    "advisor_min_pages_to_scan",
    "advisor_max_pages_to_scan",
    "advisor_target_scan_time",
}


def test_every_sysfs_file_is_read_with_its_value(host_tree: Tree) -> None:
    sample = reader.read_ksm(host_tree.sys_root)
    assert sample.available and sample.missing == [] and sample.errors == {}
    assert set(sample.values) == set(reader.KNOWN_FILES)
    v = sample.values
    assert (v["pages_shared"], v["pages_sharing"], v["pages_unshared"]) == (2, 62, 16)
    assert (v["ksm_zero_pages"], v["general_profit"], v["run"]) == (32, 379904, 1)
    assert v["advisor_mode"] == "none"
    assert sample.choices == {"advisor_mode": ["none", "scan-time"]}
    assert "run" in sample.knobs and "pages_shared" not in sample.knobs


def test_old_kernel_files_are_missing_not_zero(old_tree: Tree) -> None:
    sample = reader.read_ksm(old_tree.sys_root)
    assert set(sample.missing) == OLD_KERNEL_ABSENT
    assert all(sample.values[name] is None for name in OLD_KERNEL_ABSENT)
    assert sample.values["pages_sharing"] == 62
    assert "advisor_mode" not in sample.choices


def test_a_kernel_without_ksm_is_unavailable(tmp_path: Path) -> None:
    sample = reader.read_ksm(tmp_path)
    assert not sample.available
    assert all(v is None for v in sample.values.values())


def test_an_unknown_new_file_is_kept(host_tree: Tree) -> None:
    (host_tree.sys_root / "kernel/mm/ksm/some_future_counter").write_text("7\n")
    assert reader.read_ksm(host_tree.sys_root).values["some_future_counter"] == 7


def test_an_unreadable_file_is_an_error_not_missing(
    host_tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith("/pages_volatile"):
            raise PermissionError(13, "Permission denied")
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(reader, "open", fake_open, raising=False)
    sample = reader.read_ksm(host_tree.sys_root)
    assert sample.values["pages_volatile"] is None
    assert sample.errors == {"pages_volatile": "Permission denied"}
    assert "pages_volatile" not in sample.missing


@pytest.mark.parametrize(
    "text, value, choices",
    [
        ("100\n", 100, None),
        ("-640\n", -640, None),
        ("[none] scan-time\n", "none", ["none", "scan-time"]),
        ("none [scan-time]\n", "scan-time", ["none", "scan-time"]),
        ("abc\n", "abc", None),
    ],
)
def test_parse_sysfs_value(text: str, value: object, choices: object) -> None:
    assert reader.parse_sysfs_value(text) == (value, choices)


def test_parse_ksm_stat_numbers_and_yes_no() -> None:
    text = (
        "ksm_rmap_items 5\nksm_zero_pages 0\nksm_merging_pages 2\n"
        "ksm_process_profit -640\nksm_merge_any: no\nksm_mergeable: yes\n"
    )
    assert reader.parse_ksm_stat(text) == {
        "ksm_rmap_items": 5,
        "ksm_zero_pages": 0,
        "ksm_merging_pages": 2,
        "ksm_process_profit": -640,
        "ksm_merge_any": False,
        "ksm_mergeable": True,
    }


def test_processes_using_ksm(host_tree: Tree) -> None:
    table = reader.read_procs(host_tree.proc_root)
    assert [p.pid for p in table.procs] == [WORKER_PID]
    p = table.procs[0]
    assert (p.command, p.ksm_rmap_items, p.ksm_zero_pages, p.ksm_merging_pages) == (
        "python",
        80,
        32,
        64,
    )
    assert (p.ksm_process_profit, p.mergeable, p.merge_any) == (388096, True, False)
    assert (table.scanned, table.vanished, table.unreadable) == (3, 0, 0)


def test_all_processes_leave_out_kernel_threads(host_tree: Tree) -> None:
    table = reader.read_procs(host_tree.proc_root, include_all=True)
    assert [p.pid for p in table.procs] == [1, WORKER_PID]


def test_old_kernel_process_lines_are_missing(old_tree: Tree) -> None:
    (p,) = reader.read_procs(old_tree.proc_root).procs
    assert (p.ksm_rmap_items, p.ksm_merging_pages) == (80, 64)  # merging from its own file
    assert (p.ksm_zero_pages, p.ksm_process_profit, p.mergeable, p.merge_any) == (
        None,
        None,
        None,
        None,
    )


def test_a_process_that_exits_mid_read_is_skipped(
    host_tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = reader._read_proc_file

    def exit_after_ksm_stat(root: Path, pid: int, name: str) -> str | None:
        text = real(root, pid, name)
        if pid == WORKER_PID and name == "ksm_stat":
            shutil.rmtree(root / str(pid))  # the process exits before comm is read
        return text

    monkeypatch.setattr(reader, "_read_proc_file", exit_after_ksm_stat)
    table = reader.read_procs(host_tree.proc_root)
    assert table.procs == [] and table.vanished == 1


@pytest.mark.parametrize(
    "error", [ProcessLookupError(3, "No such process"), PermissionError(13, "Permission denied")]
)
def test_gone_or_unreadable_processes_are_counted(
    host_tree: Tree, monkeypatch: pytest.MonkeyPatch, error: OSError
) -> None:
    def fake_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if f"/{WORKER_PID}/ksm_stat" in str(path):
            raise error
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(reader, "open", fake_open, raising=False)
    table = reader.read_procs(host_tree.proc_root)
    assert table.procs == []
    assert (table.vanished, table.unreadable) == (
        (1, 0) if isinstance(error, ProcessLookupError) else (0, 1)
    )


def test_derived_figures(host_tree: Tree) -> None:
    values = reader.read_ksm(host_tree.sys_root).values
    assert reader.global_rmap_items(values) == (80, "from general_profit")
    d = {x.name: x for x in reader.derive(values)}
    assert d["sharing_ratio"].value == 31.0
    assert d["profit_per_rmap_item"].value == pytest.approx(379904 / 80)
    assert d["zero_pages_share"].value == pytest.approx(32 / 94)
    assert all(x.explanation for x in d.values())


def test_derived_figures_on_an_old_kernel(old_tree: Tree) -> None:
    values = reader.read_ksm(old_tree.sys_root).values
    assert reader.global_rmap_items(values) == (80, "estimated from the page counters")
    d = {x.name: x for x in reader.derive(values)}
    assert d["sharing_ratio"].value == 31.0
    assert d["profit_per_rmap_item"].value is None
    assert "no general_profit" in d["profit_per_rmap_item"].explanation
    assert d["zero_pages_share"].value is None
    assert "no ksm_zero_pages" in d["zero_pages_share"].explanation


def test_no_ksm_page_gives_no_ratio() -> None:
    values: dict[str, int | str | None] = {"pages_shared": 0, "pages_sharing": 0}
    assert reader.derive(values)[0].value is None
