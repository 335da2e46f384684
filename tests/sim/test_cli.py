"""The scenario CLI, run as a user would: ``python -m sim run`` and ``compare``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write(tmp: Path, name: str, doc: object) -> Path:
    path = tmp / name
    path.write_text(json.dumps(doc))
    return path


SCENARIO = {
    "format": "ksm-scenario/1",
    "name": "cli",
    "sysfs": {"use_zero_pages": 1},
    "steps": [
        {"op": "spawn", "proc": "A"},
        {"op": "mmap", "proc": "A", "vma": "m", "pages": 8},
        {"op": "write", "proc": "A", "vma": "m", "content": "zero", "pages": "0-3"},
        {"op": "write", "proc": "A", "vma": "m", "content": "X", "pages": "4-7"},
        {"op": "madvise", "proc": "A", "vma": "m", "advice": "MADV_MERGEABLE"},
        {"op": "scan", "passes": 2},
        {"op": "checkpoint", "name": "merged"},
    ],
}


def test_run_writes_a_trace_to_stdout(tmp_path: Path) -> None:
    res = run("run", str(write(tmp_path, "s.json", SCENARIO)))
    assert res.returncode == 0, res.stderr
    trace = json.loads(res.stdout)
    assert trace["format"] == "ksm-trace/1"
    assert trace["checkpoints"][0]["pages"]["A"]["m"] == "Z Z Z Z K0 K0 K0 K0"


def test_run_kernel_override_and_trace_file(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    res = run(
        "run", str(write(tmp_path, "s.json", SCENARIO)), "--kernel", "6.5", "--trace", str(out)
    )
    assert res.returncode == 0 and res.stdout == ""
    cp = json.loads(out.read_text())["checkpoints"][0]
    assert cp["global"]["ksm_zero_pages"] is None


def test_bad_scenario_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    bad = json.loads(json.dumps(SCENARIO))
    bad["steps"][3]["pages"] = "4-9"
    out = tmp_path / "t.json"
    res = run("run", str(write(tmp_path, "bad.json", bad)), "--trace", str(out))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1
    assert "step 3" in res.stderr and "'pages'" in res.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.json"]


@pytest.mark.parametrize("content", ["{not json", "[]"])
def test_unparsable_files_exit_2(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    res = run("run", str(path))
    assert res.returncode == 2 and res.stderr.count("\n") == 1


def test_missing_file_and_bad_kernel_exit_2(tmp_path: Path) -> None:
    assert run("run", str(tmp_path / "nope.json")).returncode == 2
    res = run("run", str(write(tmp_path, "s.json", SCENARIO)), "--kernel", "5.10")
    assert res.returncode == 2


def test_prctl_on_61_is_unsupported(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(SCENARIO))
    doc["steps"].insert(2, {"op": "prctl", "proc": "A", "value": 1})
    res = run("run", str(write(tmp_path, "p.json", doc)), "--kernel", "6.1")
    assert res.returncode == 4 and "unsupported" in res.stderr


def test_compare_agreeing_and_disagreeing_traces(tmp_path: Path) -> None:
    s = write(tmp_path, "s.json", SCENARIO)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run("run", str(s), "--trace", str(a)).returncode == 0
    assert run("run", str(s), "--trace", str(b), "--kernel", "6.5").returncode == 0
    same = run("compare", str(a), str(a))
    assert same.returncode == 0 and "agree" in same.stdout
    diff = run("compare", str(a), str(b))
    assert diff.returncode == 1
    assert "ksm_zero_pages" in diff.stdout


def test_compare_accepts_consistent_k_renumbering(tmp_path: Path) -> None:
    cp = {
        "name": "c",
        "global": {},
        "procs": {},
        "pages": {"A": {"m": "K0 K1 K0 A"}, "B": {"m": "K1"}},
    }
    other = json.loads(json.dumps(cp))
    other["pages"] = {"A": {"m": "K5 K2 K5 A"}, "B": {"m": "K2"}}
    bad = json.loads(json.dumps(cp))
    bad["pages"] = {"A": {"m": "K5 K2 K5 A"}, "B": {"m": "K5"}}
    paths = []
    for i, c in enumerate((cp, other, bad)):
        paths.append(write(tmp_path, f"{i}.json", {"format": "ksm-trace/1", "checkpoints": [c]}))
    assert run("compare", str(paths[0]), str(paths[1])).returncode == 0
    assert run("compare", str(paths[0]), str(paths[2])).returncode == 1


def test_compare_sets_tied_pages_aside_but_counts_their_ksm_pages(tmp_path: Path) -> None:
    def trace(pages: str, ties: bool) -> dict[str, object]:
        meta = {
            "page_classification": {
                "ambiguous_pages": [
                    {"checkpoint": 0, "name": "c", "proc": "P2", "vma": "m", "pages": [0, 1, 2]}
                ]
            }
        }
        return {
            "format": "ksm-trace/1",
            "meta": meta if ties else {},
            "checkpoints": [
                {
                    "name": "c",
                    "global": {"pages_shared": 1},
                    "procs": {},
                    "pages": {"P2": {"m": pages}, "P3": {"m": "A K9"}},
                }
            ],
        }

    kernel = write(tmp_path, "k.json", trace("K0 A A K1", ties=True))
    plain = write(tmp_path, "plain.json", trace("K0 A A K1", ties=False))
    sim = write(tmp_path, "s.json", trace("A K0 A K1", ties=False))
    too_many = write(tmp_path, "t.json", trace("K0 K2 A K1", ties=False))
    tied = run("compare", str(kernel), str(sim))
    assert tied.returncode == 0 and "tied page" in tied.stdout, tied.stdout
    assert run("compare", str(plain), str(sim)).returncode == 1  # no ties listed: differs
    bad = run("compare", str(kernel), str(too_many))
    assert bad.returncode == 1 and "1 KSM page(s) among the tied pages != 2" in bad.stdout
