"""Every preset is a valid story: it runs on every kernel profile with the invariant checker
on, its metadata is complete, and the facts its description promises are in its trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sim import UnsupportedError, run_scenario
from sim.cli import main as sim_main
from sim.presets import (
    PRESETS_DIR,
    STORY_ORDER,
    UnknownPresetError,
    list_presets,
    load_preset,
    preset_names,
)
from sim.scenario import KERNELS

NAMES = preset_names()


def trace(name: str, kernel: str = "6.18") -> dict[str, Any]:
    return run_scenario(load_preset(name, kernel), check=True)


def cp(tr: dict[str, Any], name: str) -> dict[str, Any]:
    for c in tr["checkpoints"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no checkpoint {name!r}")


def uses_prctl(name: str) -> bool:
    return any(s.op == "prctl" for s in load_preset(name).steps)


def test_the_nine_stories_are_shipped() -> None:
    assert len(NAMES) >= 9
    assert NAMES[: len(STORY_ORDER)] == list(STORY_ORDER)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", NAMES)
def test_preset_runs_with_invariants(name: str, kernel: str) -> None:
    scenario = load_preset(name, kernel)
    if kernel == "6.1" and uses_prctl(name):
        with pytest.raises(UnsupportedError):
            run_scenario(scenario, check=True)
        return
    tr = run_scenario(scenario, check=True)
    assert tr["checkpoints"], name
    assert tr["meta"]["step_errors"] == []


@pytest.mark.parametrize("name", NAMES)
def test_preset_metadata(name: str) -> None:
    doc = json.loads((PRESETS_DIR / f"{name}.json").read_text())
    assert doc["format"] == "ksm-scenario/1"
    assert doc["name"] == name
    assert 0 < len(doc["title"]) <= 80
    assert len(doc["description"]) > 200
    checkpoints = [s["name"] for s in doc["steps"] if s["op"] == "checkpoint"]
    assert len(checkpoints) == len(set(checkpoints)) >= 4
    assert list(doc["checkpoint_notes"]) == checkpoints
    if "sweep_until" in doc:
        assert doc["sweep_until"] in checkpoints
    allowed = {
        "format",
        "name",
        "title",
        "description",
        "kernel",
        "sysfs",
        "steps",
        "checkpoint_notes",
        "sweep_until",
    }
    assert set(doc) <= allowed


def test_list_presets() -> None:
    infos = list_presets()
    assert [p.name for p in infos] == NAMES
    by_name = {p.name: p for p in infos}
    assert by_name["prctl-merge-any"].kernels == ("6.18", "6.12", "6.5")
    assert by_name["vm-host"].kernels == KERNELS
    assert by_name["zero-pages-unmerge"].checkpoints[-1] == "unmergeable+1pass"
    assert by_name["zero-pages-unmerge"].summary.endswith(".")
    assert json.dumps([p.to_dict() for p in infos])


def test_unknown_preset() -> None:
    with pytest.raises(UnknownPresetError):
        load_preset("no-such-preset")
    with pytest.raises(UnknownPresetError):
        load_preset("../pyproject")


def test_sim_cli_runs_a_preset_by_name(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    assert sim_main(["run", "chains-and-dups", "--check", "--trace", str(out)]) == 0
    assert json.loads(out.read_text())["scenario"] == "chains-and-dups"


# ---------------------------------------------------------------- the stories' facts
def test_zero_pages_unmerge_story() -> None:
    new = trace("zero-pages-unmerge")
    assert cp(new, "pass2-merged")["global"]["ksm_zero_pages"] == 100
    unm = cp(new, "unmergeable")
    assert unm["global"]["ksm_zero_pages"] == 0
    assert "Z" not in unm["pages"]["A"]["heap"]
    assert unm["global"]["pages_sharing"] == 99  # stale until the next pass
    old = trace("zero-pages-unmerge", "6.5")
    assert cp(old, "pass2-merged")["global"]["ksm_zero_pages"] is None
    assert cp(old, "unmergeable+1pass")["pages"]["A"]["heap"].split().count("Z") == 100


def test_zero_pages_chain_story() -> None:
    for kernel in ("6.18", "6.5"):
        g = cp(trace("zero-pages-ksm-chain", kernel), "merged-chain")["global"]
        assert (g["pages_shared"], g["pages_sharing"]) == (3, 597)
        assert (g["stable_node_chains"], g["stable_node_dups"]) == (1, 3)
        assert g["ksm_zero_pages"] in (0, None)
    end = cp(trace("zero-pages-ksm-chain", "6.5"), "unmergeable+1pass")
    assert "Z" not in end["pages"]["A"]["heap"]


def test_vm_host_story() -> None:
    new = trace("vm-host")
    assert cp(new, "vm3+1pass")["procs"]["vm3"]["ksm_merging_pages"] == 0
    assert cp(new, "vm3+2passes")["global"]["pages_sharing"] == 8 * 24 - 8
    old = trace("vm-host", "6.5")
    assert cp(old, "vm3+1pass")["procs"]["vm3"]["ksm_merging_pages"] == 64
    down = cp(new, "vm1-shutdown")
    assert "vm1" not in down["procs"]
    assert down["global"]["ksm_zero_pages"] == 600


def test_forking_server_story() -> None:
    new = trace("forking-server")
    assert cp(new, "pass2")["global"]["pages_sharing"] == 4 * 48 - 1
    assert cp(new, "written+2passes")["global"]["pages_shared"] == 2
    assert cp(new, "late-fork")["procs"]["w4"]["ksm_rmap_items"] == 0
    assert cp(new, "late-fork+1pass")["procs"]["w4"]["ksm_merging_pages"] == 48
    old = trace("forking-server", "6.5")
    assert cp(old, "late-fork")["procs"]["w4"]["ksm_rmap_items"] == 256


def test_volatile_buffers_story() -> None:
    new = trace("volatile-buffers")
    for n in range(2, 5):
        g = cp(new, f"rewrite{n}+pass")["global"]
        assert (g["pages_volatile"], g["pages_unshared"], g["pages_sharing"]) == (100, 0, 99)
    assert cp(new, "quiet+1pass")["global"]["pages_skipped"] == 100
    assert cp(new, "quiet+2passes")["global"]["pages_shared"] == 2
    assert cp(trace("volatile-buffers", "6.5"), "quiet+1pass")["global"]["pages_shared"] == 2


def test_chains_and_dups_story() -> None:
    tr = trace("chains-and-dups")
    g = cp(tr, "merged")["global"]
    assert (g["stable_node_chains"], g["stable_node_dups"]) == (1, 3)
    assert cp(tr, "dup-killed+1pass")["global"]["stable_node_dups"] == 2
    assert cp(tr, "more+2passes")["global"]["stable_node_dups"] == 3
    g = cp(tr, "collapsed")["global"]
    assert (g["stable_node_chains"], g["stable_node_dups"], g["pages_shared"]) == (0, 0, 1)


def test_smart_scan_story() -> None:
    tr = trace("smart-scan")
    skipped = [
        cp(tr, n)["global"]["pages_skipped"]
        for n in ("pass4", "pass5", "pass6", "pass9", "pass14", "pass23")
    ]
    assert skipped == [0, 800, 800, 2400, 5600, 12000]
    before = cp(tr, "pass23")["global"]
    after = cp(tr, "smart-off+5")["global"]
    assert after["pages_scanned"] - before["pages_scanned"] == 5 * 1000
    assert after["pages_skipped"] == before["pages_skipped"]
    assert cp(trace("smart-scan", "6.5"), "pass23")["global"]["pages_skipped"] is None


def test_run2_story() -> None:
    new = trace("run2-unmerge-all")
    g = cp(new, "after-run2")["global"]
    assert g["full_scans"] == 0 and g["pages_shared"] == 0 and g["ksm_zero_pages"] == 0
    assert cp(new, "rescan-pass2")["global"]["pages_sharing"] == 159
    old = cp(trace("run2-unmerge-all", "6.5"), "after-run2")
    assert old["pages"]["P"]["m"].split().count("Z") == 60


def test_prctl_story() -> None:
    tr = trace("prctl-merge-any")
    on = cp(tr, "prctl-on")["procs"]["worker"]
    assert on["ksm_merge_any"] is True and on["ksm_mergeable"] is True
    assert cp(tr, "before-prctl")["procs"]["worker"]["ksm_mergeable"] is False
    assert cp(tr, "new-mapping+2passes")["global"]["pages_sharing"] == 149
    off = cp(tr, "prctl-off+1pass")
    assert off["procs"]["worker"]["ksm_merge_any"] is False
    assert off["global"]["pages_shared"] == 0
