"""Tests on the real kernel (``KSMLAB_KERNEL_TESTS=1``, root): see ``conftest.py``.

Each of them leaves ``/sys/kernel/mm/ksm`` as it found it (checked by the ``kernel``
fixture).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.kernel import libc, replayer
from app.kernel.guard import host_lock, lock_file_path, read_state
from app.kernel.host.procfs import ProcFs
from app.kernel.ops import SCAN_PAGES
from app.kernel.replayer import replay_scenario
from app.kernel.session import KernelSession, ReplayConfig
from app.kernel.sysfs import KsmSysfs
from sim.scenario import load_scenario, parse_scenario
from sim.trace import compare_traces, load_trace
from tests.conftest import shared_dir

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((shared_dir() / "scenarios").glob("*.json"))


def _sim_available() -> bool:
    try:
        from sim import run_scenario  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_public_scenario_reproduces_its_trace(kernel: KsmSysfs, shared: Path, path: Path) -> None:
    expected = load_trace(shared / "traces" / path.name)
    trace = replay_scenario(load_scenario(path), ReplayConfig())
    meta = trace["meta"]
    context = {k: meta[k] for k in ("warnings", "scans", "step_errors", "isolation")}
    assert compare_traces(expected, trace) == [], json.dumps(context, indent=1)
    assert meta["restore_problems"] == {}
    assert meta["warnings"] == []
    assert meta["isolation"]["alone"]
    assert meta["run_seconds"] < 10  # ~0.05-0.1 s on an idle host; CI machines may be busy
    assert trace["source"] == f"kernel {os.uname().release}"


@pytest.mark.skipif(
    not _sim_available(), reason="the simulator (sim.run_scenario) is not importable yet"
)
def test_differential_fuzz_agrees(kernel: KsmSysfs, tmp_path: Path) -> None:
    from app.kernel import fuzz

    with KernelSession(ReplayConfig()) as session:
        result = fuzz.fuzz(
            fuzz.host_runner(session), count=20, seed=20251201, out=tmp_path, shrink_budget=60
        )
    assert session.restore_problems == {}
    assert result.disagree == 0, json.dumps(result.failures, indent=1)
    assert result.agree == 20


def test_merge_any_worker_only_exposes_scenario_mappings(kernel: KsmSysfs) -> None:
    """prctl(1) marks the interpreter's own VMAs; the replayer unmarks them (and a
    merge-any process dropped by ksmd is not registered again by the worker's Python)."""
    doc = {
        "format": "ksm-scenario/1",
        "name": "merge-any",
        "steps": [
            {"op": "spawn", "proc": "P"},
            {"op": "spawn", "proc": "Q"},
            {"op": "prctl", "proc": "P", "value": 1},
            {"op": "scan", "passes": 1},
            {"op": "checkpoint", "name": "dropped"},
            {"op": "fork", "proc": "P", "child": "C"},
            {"op": "scan", "passes": 1},
            {"op": "checkpoint", "name": "still-dropped"},
            {"op": "mmap", "proc": "P", "vma": "m", "pages": 8},
            {"op": "write", "proc": "P", "vma": "m", "content": "A"},
            {"op": "scan", "passes": 2},
            {"op": "checkpoint", "name": "merged"},
        ],
    }
    trace = replay_scenario(parse_scenario(doc), ReplayConfig())
    cps = {c["name"]: c for c in trace["checkpoints"]}
    assert trace["meta"]["warnings"] == []
    assert cps["dropped"]["global"]["full_scans"] == 1
    assert cps["dropped"]["procs"]["P"]["ksm_mergeable"] is False
    assert cps["dropped"]["procs"]["P"]["ksm_merge_any"] is True
    assert cps["still-dropped"]["global"]["full_scans"] == 1  # nothing registered
    assert cps["merged"]["global"]["full_scans"] == 3
    assert cps["merged"]["pages"]["P"]["m"] == " ".join(["K0"] * 8)
    assert cps["merged"]["procs"]["P"]["ksm_rmap_items"] == 8
    if _sim_available():
        from sim import run_scenario

        assert compare_traces(trace, run_scenario(parse_scenario(doc))) == []


# --------------------------------------------------------------------------------------
# interruptions


LONG_SCAN = {
    "format": "ksm-scenario/1",
    "name": "long-scan",
    "sysfs": {"use_zero_pages": 1},
    "steps": [
        {"op": "spawn", "proc": "P"},
        {"op": "mmap", "proc": "P", "vma": "m", "pages": 64},
        {"op": "write", "proc": "P", "vma": "m", "content": "A"},
        {"op": "madvise", "proc": "P", "vma": "m", "advice": "MADV_MERGEABLE"},
        {"op": "fork", "proc": "P", "child": "C"},
        {"op": "scan", "passes": 100000},
        {"op": "checkpoint", "name": "never"},
    ],
}


def _python(*args: str, **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


@pytest.fixture
def private_files(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A private lock and state file, while the real host lock is held by the test: no
    other replay can start while the knobs are deliberately left dirty."""
    with host_lock(lock_file_path()):
        yield tmp_path / "replay.lock", tmp_path / "state.json"


def _start_long_scan(
    tmp_path: Path, lock: Path, state: Path, sysfs: KsmSysfs
) -> tuple[subprocess.Popen[str], list[int]]:
    scen = tmp_path / "long.json"
    scen.write_text(json.dumps(LONG_SCAN))
    proc = _python(
        "-m",
        "app.kernel.replayer",
        str(scen),
        "--trace",
        str(tmp_path / "t.json"),
        "--lock-file",
        str(lock),
        "--state-file",
        str(state),
    )
    deadline = time.monotonic() + 20
    while not (
        sysfs.read("run") == 1
        and sysfs.read("pages_to_scan") == SCAN_PAGES
        and sysfs.read_int("full_scans")
    ):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the replay never reached its scan"
        time.sleep(0.005)
    doc = read_state(state)
    assert doc is not None
    workers = [int(w["pid"]) for w in doc["workers"]]
    assert len(workers) == 2
    return proc, workers


def _gone(pids: list[int]) -> bool:
    return all(ProcFs().state(pid) in (None, "Z", "X") for pid in pids)


def test_sigkill_mid_scan_then_restore(
    kernel: KsmSysfs, tmp_path: Path, private_files: tuple[Path, Path]
) -> None:
    lock, state = private_files
    before = kernel.knobs()
    proc, workers = _start_long_scan(tmp_path, lock, state, kernel)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    dirty = kernel.knobs()
    assert dirty != before and dirty["pages_to_scan"] == SCAN_PAGES
    assert state.exists()
    restore = _python(
        "-m", "app.cli", "replay", "--restore", "--lock-file", str(lock), "--state-file", str(state)
    )
    out, err = restore.communicate(timeout=60)
    assert restore.returncode == 0, err
    assert "restored" in err
    assert kernel.knobs() == before
    assert not state.exists()
    deadline = time.monotonic() + 10
    while not _gone(workers):
        assert time.monotonic() < deadline, "workers survived their controller"
        time.sleep(0.01)


def test_sigterm_mid_scan_restores_by_itself(
    kernel: KsmSysfs, tmp_path: Path, private_files: tuple[Path, Path]
) -> None:
    lock, state = private_files
    before = kernel.knobs()
    proc, workers = _start_long_scan(tmp_path, lock, state, kernel)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM; knobs restored" in err
    assert kernel.knobs() == before
    assert not state.exists()
    assert _gone(workers)
    assert not (tmp_path / "t.json").exists()


# --------------------------------------------------------------------------------------
# refusals


HELPER = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
addr = libc.mmap(None, 16 * 4096, 3, 0x22, -1, 0)
ctypes.memset(addr, 7, 16 * 4096)
assert libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(16 * 4096), 12) == 0
print("ready", flush=True)
time.sleep(120)
"""

SMALL = {
    "format": "ksm-scenario/1",
    "name": "small",
    "steps": [
        {"op": "spawn", "proc": "P"},
        {"op": "mmap", "proc": "P", "vma": "m", "pages": 4},
        {"op": "write", "proc": "P", "vma": "m", "content": "A"},
        {"op": "madvise", "proc": "P", "vma": "m", "advice": "MADV_MERGEABLE"},
        {"op": "scan", "passes": 2},
        {"op": "checkpoint", "name": "c"},
    ],
}


def test_refuses_when_another_process_has_mergeable_memory(
    kernel: KsmSysfs, tmp_path: Path, private_files: tuple[Path, Path]
) -> None:
    lock, state = private_files  # nobody else is refused because of our helper
    scen = tmp_path / "small.json"
    scen.write_text(json.dumps(SMALL))
    before = kernel.knobs()
    helper = _python("-c", HELPER)
    try:
        assert helper.stdout is not None
        assert helper.stdout.readline().strip() == "ready"
        proc = _python(
            "-m",
            "app.cli",
            "replay",
            str(scen),
            "--trace",
            str(tmp_path / "t.json"),
            "--state-file",
            str(state),
            "--lock-file",
            str(lock),
        )
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert "another process uses KSM" in lines[0] and f"pid {helper.pid}" in lines[0]
        assert not state.exists() and not (tmp_path / "t.json").exists()
        assert kernel.knobs() == before
        forced = _python(
            "-m",
            "app.cli",
            "replay",
            str(scen),
            "--trace",
            str(tmp_path / "t.json"),
            "--state-file",
            str(state),
            "--lock-file",
            str(lock),
            "--force",
        )
        _, err = forced.communicate(timeout=120)
        assert forced.returncode == 0, err
        meta = json.loads((tmp_path / "t.json").read_text())["meta"]
        assert meta["isolation"]["alone"] is False
        assert [u["pid"] for u in meta["isolation"]["other_ksm_processes"]] == [helper.pid]
    finally:
        helper.kill()
        helper.communicate()


def test_unsupported_prctl_exits_4_before_touching_anything(
    kernel: KsmSysfs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = {
        **SMALL,
        "steps": [
            *SMALL["steps"][:1],
            {"op": "prctl", "proc": "P", "value": 1},
            {"op": "checkpoint", "name": "c"},
        ],
    }
    scen = tmp_path / "prctl.json"
    scen.write_text(json.dumps(doc))
    state = tmp_path / "state.json"
    monkeypatch.setattr(libc, "memory_merge_supported", lambda: False)
    before = kernel.knobs()
    parser = argparse.ArgumentParser()
    replayer.add_arguments(parser)
    args = parser.parse_args(
        [str(scen), "--trace", str(tmp_path / "t.json"), "--state-file", str(state)]
    )
    assert replayer.run(args) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unsupported on this kernel" in err[0]
    assert not state.exists() and not (tmp_path / "t.json").exists()
    assert kernel.knobs() == before


def test_replay_from_a_worker_thread(kernel: KsmSysfs, shared: Path) -> None:
    """A server thread can replay too (no signal handlers there; the restore still runs)."""
    import threading

    name = "two-processes-identical.json"
    out: dict[str, Any] = {}

    def run() -> None:
        out["trace"] = replay_scenario(load_scenario(shared / "scenarios" / name), ReplayConfig())

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    trace = out["trace"]
    assert compare_traces(load_trace(shared / "traces" / name), trace) == []
    assert trace["meta"]["restore_problems"] == {}


def _doc(name: str, sysfs: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"format": "ksm-scenario/1", "name": name, "sysfs": sysfs, "steps": steps}


def _labelled(pages: int, *writes: tuple[str, str]) -> list[dict[str, Any]]:
    return [
        {"op": "spawn", "proc": "P"},
        {"op": "mmap", "proc": "P", "vma": "m", "pages": pages},
        *({"op": "write", "proc": "P", "vma": "m", "content": c, "pages": p} for c, p in writes),
        {"op": "madvise", "proc": "P", "vma": "m", "advice": "MADV_MERGEABLE"},
    ]


@pytest.mark.skipif(not _sim_available(), reason="the simulator is not importable")
def test_passes_follow_the_formats_clock_and_the_prune_timer_agrees(kernel: KsmSysfs) -> None:
    """Issue 16: max_page_sharing 4, the default prune interval (2000 ms): once 2 s have
    passed on the clock (10 passes), a search prunes and a new page joins the fullest
    non-full dup (3 items), not the head one; the kernel agrees only if passes are paced."""
    from sim import run_scenario

    w = ("write", "P", "m")
    steps = [
        *_labelled(7, ("A", "1-6")),
        {"op": "scan", "passes": 2},
        {"op": "checkpoint", "name": "chain"},
        dict(zip(("op", "proc", "vma"), w, strict=True), content="unique", pages="1"),
        {"op": "scan", "passes": 1},
        {"op": "checkpoint", "name": "dup-of-3"},
        {"op": "scan", "passes": 7},
        dict(zip(("op", "proc", "vma"), w, strict=True), content="A", pages="0"),
        {"op": "scan", "passes": 1},
        {"op": "checkpoint", "name": "new-page-volatile"},
        {"op": "scan", "passes": 2},
        {"op": "checkpoint", "name": "new-page-merged"},
    ]
    scenario = parse_scenario(_doc("prune-clock", {"max_page_sharing": 4, "smart_scan": 0}, steps))
    trace = replay_scenario(scenario, ReplayConfig())
    meta = trace["meta"]
    assert meta["pacing"]["pass_gap_ms"] == 200
    for scan in meta["scans"]:
        assert scan["seconds"] >= 0.2 * (scan["passes"] - 1) - 0.01  # no pass starts early
        assert scan["full_scans_after"] - scan["full_scans_before"] == scan["passes"]
    assert compare_traces(trace, run_scenario(scenario)) == [], json.dumps(meta["scans"])


@pytest.mark.skipif(not _sim_available(), reason="the simulator is not importable")
def test_labels_order_the_tree_and_an_unpaced_root_chain_collapses(kernel: KsmSysfs) -> None:
    """Issue 16: max_page_sharing 2, prune 0: B (a chain, the root) and A; one B dup dies;
    the next pass's walks for other pages collapse the B chain. No clock is read: the
    passes run back to back."""
    from sim import run_scenario

    steps = [
        *_labelled(6, ("B", "0-3"), ("A", "4-5")),
        {"op": "mmap", "proc": "P", "vma": "u", "pages": 4},
        {"op": "write", "proc": "P", "vma": "u", "content": "unique"},
        {"op": "madvise", "proc": "P", "vma": "u", "advice": "MADV_MERGEABLE"},
        {"op": "scan", "passes": 2},
        {"op": "checkpoint", "name": "chain"},
        {"op": "write", "proc": "P", "vma": "m", "content": "unique", "pages": "0-1"},
        {"op": "scan", "passes": 1},
        {"op": "checkpoint", "name": "next-pass"},
        {"op": "scan", "passes": 1},
        {"op": "checkpoint", "name": "pass-after"},
    ]
    sysfs = {"max_page_sharing": 2, "stable_node_chains_prune_millisecs": 0, "smart_scan": 0}
    scenario = parse_scenario(_doc("root-chain", sysfs, steps))
    trace = replay_scenario(scenario, ReplayConfig())
    assert trace["meta"]["pacing"]["pass_gap_ms"] == 0
    assert trace["checkpoints"][0]["global"]["stable_node_chains"] == 1
    assert trace["checkpoints"][-1]["global"]["stable_node_chains"] == 0
    assert compare_traces(trace, run_scenario(scenario)) == []


def test_an_empty_knob_write_succeeds_and_changes_nothing(kernel: KsmSysfs) -> None:
    """Issue 16 item 4, as the simulator models it (sim/knobs.py)."""
    steps = [
        {"op": "sysfs", "knob": "max_page_sharing", "value": ""},
        {"op": "sysfs", "knob": "smart_scan", "value": ""},
        {"op": "checkpoint", "name": "c"},
    ]
    scenario = parse_scenario(_doc("empty-knob", {"max_page_sharing": 3}, steps))
    trace = replay_scenario(scenario, ReplayConfig())
    assert trace["meta"]["step_errors"] == []
    sysfs = KsmSysfs()
    before = sysfs.read("stable_node_chains_prune_millisecs")
    sysfs.write("stable_node_chains_prune_millisecs", "")  # no error: write(2) of 0 bytes
    assert sysfs.read("stable_node_chains_prune_millisecs") == before
