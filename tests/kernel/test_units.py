"""Parsing, page contents, fuzz generation and shrinking (no root, no kernel)."""

from __future__ import annotations

import copy
import ctypes
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.kernel import fuzz, worker
from app.kernel.host.procfs import ProcFs, parse_ksm_stat, parse_maps, parse_smaps
from sim.scenario import parse_scenario

KSM_STAT_618 = """ksm_rmap_items 200
ksm_zero_pages 100
ksm_merging_pages 100
ksm_process_profit 806400
ksm_merge_any: no
ksm_mergeable: yes
"""


def test_parse_ksm_stat() -> None:
    assert parse_ksm_stat(KSM_STAT_618) == {
        "ksm_rmap_items": 200,
        "ksm_zero_pages": 100,
        "ksm_merging_pages": 100,
        "ksm_process_profit": 806400,
        "ksm_merge_any": False,
        "ksm_mergeable": True,
    }
    assert parse_ksm_stat("ksm_process_profit -7680\n") == {"ksm_process_profit": -7680}


def test_parse_maps_and_smaps() -> None:
    maps = parse_maps(
        "100000000000-10000000a000 rw-p 00000000 00:00 0 \n"
        "7ffd1000-7ffd2000 rw-p 00000000 00:00 0     [stack]\n"
    )
    assert [(v.start, v.end, v.name) for v in maps] == [
        (0x100000000000, 0x10000000A000, ""),
        (0x7FFD1000, 0x7FFD2000, "[stack]"),
    ]
    smaps = parse_smaps(
        "100000000000-100000004000 rw-p 00000000 00:00 0 \nSize: 16 kB\nKSM:   8 kB\n"
        "VmFlags: rd wr mr mw me ac nh mg \n"
        "7ffd1000-7ffd2000 rw-p 00000000 00:00 0   [stack]\nVmFlags: rd wr mr mw me gd ac \n"
    )
    assert [(v.start, v.ksm_kb, v.mergeable) for v in smaps] == [
        (0x100000000000, 8, True),
        (0x7FFD1000, None, False),
    ]


def _proc_tree(root: Path, procs: dict[int, dict[str, str]]) -> ProcFs:
    for pid, files in procs.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        for name, text in files.items():
            (d / name).write_text(text)
    return ProcFs(root)


def test_ksm_users_and_old_kernel_fields(tmp_path: Path) -> None:
    idle = (
        "ksm_rmap_items 0\nksm_zero_pages 0\nksm_merging_pages 0\nksm_process_profit 0\n"
        "ksm_merge_any: no\nksm_mergeable: no\n"
    )
    proc = _proc_tree(
        tmp_path,
        {
            1: {"ksm_stat": idle, "comm": "init\n"},
            20: {
                "ksm_stat": idle.replace("ksm_mergeable: no", "ksm_mergeable: yes"),
                "comm": "qemu\n",
            },
            30: {"ksm_stat": KSM_STAT_618, "comm": "other\n"},
            40: {
                "ksm_stat": "ksm_rmap_items 0\n",
                "ksm_merging_pages": "0\n",
                "comm": "old\n",
                "smaps": "1000-2000 rw-p 0 00:00 0\nVmFlags: rd wr mg \n",
            },
            50: {"ksm_stat": "ksm_rmap_items 7\n", "ksm_merging_pages": "3\n", "comm": "old2\n"},
        },
    )
    users = {u["pid"]: u["comm"] for u in proc.ksm_users()}
    assert users == {20: "qemu", 30: "other", 40: "old", 50: "old2"}
    assert [u["pid"] for u in proc.ksm_users(exclude=[20, 30, 40])] == [50]
    fields, sources = proc.proc_fields(50)  # 6.1: one ksm_stat line
    assert fields == {
        "ksm_rmap_items": 7,
        "ksm_zero_pages": None,
        "ksm_merging_pages": 3,
        "ksm_process_profit": None,
        "ksm_mergeable": None,
        "ksm_merge_any": None,
    }
    assert sources == {"ksm_merging_pages": "/proc/PID/ksm_merging_pages"}


def test_page_contents() -> None:
    page = worker.PAGE
    buf = ctypes.create_string_buffer(page)
    worker._fill_unique(buf, 12345)
    assert buf.raw == worker.unique_page(12345)
    assert worker.unique_page(1) != worker.unique_page(2)
    assert worker.label_page("A") == worker.page_bytes("A", 0)
    assert worker.label_page("A") != worker.label_page("A#3")
    assert len({worker.label_page("A"), worker.unique_page(0), bytes(page)}) == 3
    assert worker.page_bytes("zero", 0) == bytes(page)


def test_label_pages_are_the_formats_bytes() -> None:
    """scenario-format.md: SHAKE-256 of "ksm-scenario/1 label:" + label, one page long;
    the simulator orders its trees by the same bytes."""
    import hashlib

    from sim.contents import label_bytes

    for label in ("A", "B", "A#3", "é"):
        want = hashlib.shake_256(("ksm-scenario/1 label:" + label).encode()).digest(4096)
        assert worker.label_page(label)[:4096] == want == label_bytes(label)
    a, b = worker.label_page("A"), worker.label_page("B")
    assert (a < b) == (label_bytes("A") < label_bytes("B"))  # memcmp order


def test_generation_is_deterministic_valid_and_covers_every_op() -> None:
    kinds: set[str] = set()
    for i in range(200):
        doc = fuzz.generate(7, i)
        assert doc == fuzz.generate(7, i)
        parse_scenario(doc)
        kinds |= fuzz.op_kinds(doc)
    assert kinds >= {
        "spawn",
        "fork",
        "exit",
        "mmap",
        "munmap",
        "write:zero",
        "write:unique",
        "write:label",
        "read",
        "madvise:MADV_MERGEABLE",
        "madvise:MADV_UNMERGEABLE",
        "prctl:1",
        "prctl:0",
        "sysfs:use_zero_pages",
        "sysfs:max_page_sharing",
        "sysfs:smart_scan",
        "sysfs:stable_node_chains_prune_millisecs",
        "sysfs:run",
        "scan",
        "checkpoint",
    }
    assert not any(
        "prctl" in k for i in range(100) for k in fuzz.op_kinds(fuzz.generate(7, i, kernel="6.1"))
    )


def _families(seed: int, count: int) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in fuzz.FAMILIES}
    for i in range(count):
        doc = fuzz.generate(seed, i)
        out[fuzz.family(doc)].append(doc)
    return out


def _passes(doc: dict[str, Any]) -> int:
    return sum(int(s["passes"]) for s in doc["steps"] if s["op"] == "scan")


def test_families_shares_chains_and_prune_at_least_a_third() -> None:
    fams = _families(3, 600)
    assert set(fams) == {"general", "shared", "chain", "prune"}
    assert all(fams.values())
    assert len(fams["chain"]) + len(fams["prune"]) >= 600 / 3
    kinds = set().union(*(fuzz.op_kinds(d) for docs in fams.values() for d in docs))
    assert "sysfs:max_page_sharing" in kinds
    empty = [s for docs in fams.values() for d in docs for s in d["steps"] if s.get("value") == ""]
    assert empty  # the empty knob write (succeeds, changes nothing) is exercised


def test_chain_and_prune_scenarios() -> None:
    fams = _families(3, 600)
    prunes: set[int] = set()
    for doc in fams["chain"] + fams["prune"]:
        assert 2 <= doc["sysfs"]["max_page_sharing"] <= 5
        labels = {
            s["content"] for s in doc["steps"] if s["op"] == "write" and s["content"] != "zero"
        }
        assert 1 <= len(labels) <= 4
        assert "unique" not in labels  # a unique page's place in the trees is random
        for s in doc["steps"]:
            if s["op"] == "sysfs" and s["knob"] == "max_page_sharing" and s["value"] != "":
                assert 2 <= s["value"] <= 5
        prune = doc["sysfs"].get("stable_node_chains_prune_millisecs", 2000)
        prunes.add(prune)
        assert prune % 200 == 0  # due times fall on passes: the kernel's clock runs late
    assert 0 in prunes and len(prunes) > 3  # the prune timer is no longer pinned to 0
    for doc in fams["prune"]:
        assert doc["sysfs"]["stable_node_chains_prune_millisecs"] > 0
        assert 10 <= _passes(doc) <= 60
    for doc in fams["chain"] + fams["prune"]:
        shared_labels = any(
            sum(1 for s in d["steps"] if s["op"] == "write" and s["content"] == label) > 1
            for d in [doc]
            for label in "ABCD"
        )
        assert shared_labels


def test_general_and_shared_scenarios_cannot_form_chains_and_read_no_clock() -> None:
    from app.kernel.ops import needs_clock

    fams = _families(4, 300)
    for doc in fams["general"] + fams["shared"]:
        assert doc["sysfs"]["stable_node_chains_prune_millisecs"] == 0
        assert "max_page_sharing" not in doc["sysfs"]
        assert fuzz._page_count(doc) < 256
        assert not needs_clock(parse_scenario(doc))
    for doc in fams["shared"]:
        assert len([s for s in doc["steps"] if s["op"] in ("spawn", "fork")]) >= 2
    for doc in fams["prune"]:
        assert needs_clock(parse_scenario(doc))


def test_needs_clock() -> None:
    from app.kernel.ops import needs_clock, pacing

    def doc(sysfs: dict[str, Any], *steps: dict[str, Any]) -> Any:
        return parse_scenario(
            {
                "format": "ksm-scenario/1",
                "name": "t",
                "sysfs": sysfs,
                "steps": [*steps, {"op": "checkpoint", "name": "c"}],
            }
        )

    knob = "stable_node_chains_prune_millisecs"
    assert needs_clock(doc({}))  # the default, 2000 ms
    assert not needs_clock(doc({knob: 0}))
    assert not needs_clock(doc({knob: 0}, {"op": "sysfs", "knob": knob, "value": ""}))
    assert needs_clock(doc({knob: 0}, {"op": "sysfs", "knob": knob, "value": 400}))
    assert needs_clock(
        doc({knob: 0}, {"op": "sysfs", "knob": "advisor_mode", "value": "scan-time"})
    )
    assert pacing(True)["pass_gap_ms"] == 200
    assert pacing(False)["pass_gap_ms"] == 0


def test_shrink_keeps_the_failure_and_drops_the_rest() -> None:
    doc = fuzz.generate(11, 4)
    doc["sysfs"] = {"smart_scan": 0, "use_zero_pages": 1}
    doc["steps"].insert(2, {"op": "write", "proc": "P0", "vma": "m0", "content": "BUG"})
    calls = 0

    def still(cands: Sequence[dict[str, Any]]) -> list[bool]:
        nonlocal calls
        calls += len(cands)
        return [any(s.get("content") == "BUG" for s in c["steps"]) for c in cands]

    for batch in (False, True):
        small = fuzz.shrink(doc, still, batch=batch)
        ops = [s["op"] for s in small["steps"]]
        assert ops == ["spawn", "mmap", "write", "checkpoint"], ops
        assert small["steps"][1]["pages"] == 1
        assert small["sysfs"] == {}
    assert calls < 2000


def test_shrunk_mapping_clips_page_selections() -> None:
    doc = {
        "format": "ksm-scenario/1",
        "name": "x",
        "steps": [
            {"op": "spawn", "proc": "P"},
            {"op": "mmap", "proc": "P", "vma": "m", "pages": 16},
            {"op": "fork", "proc": "P", "child": "C"},
            {"op": "write", "proc": "C", "vma": "m", "content": "A", "pages": ["2-12", 15]},
            {"op": "read", "proc": "P", "vma": "m", "pages": 14},
            {"op": "checkpoint", "name": "c"},
        ],
    }
    small = fuzz._shrink_mapping(doc, 1)
    assert small is not None
    parse_scenario(small)
    assert small["steps"][1]["pages"] == 8
    assert small["steps"][3]["pages"] == ["2-7"]
    assert [s["op"] for s in small["steps"]] == ["spawn", "mmap", "fork", "write", "checkpoint"]


def test_dirty_rule_solutions_find_ties_and_forced_choices() -> None:
    from app.kernel.host.frames import count_solutions, solve_ksm_frames

    a, b = ("P2", "m1"), ("P3", "m1")

    def exact(**n: int) -> dict[tuple[str, str], tuple[int, int]]:
        return {k: (v, v) for k, v in ((a, n.get("a", 0)), (b, n.get("b", 0)))}

    # two frames each mapped once in a and once in b, one KSM page in each: a tie
    assert count_solutions([{a: 1, b: 1}], [2], exact(a=1, b=1)) == ([[1]], True)
    assert solve_ksm_frames({10: {a: 1, b: 1}, 11: {a: 1, b: 1}}, exact(a=1, b=1)) == (
        {10},
        {10, 11},
    )
    # a frame mapped twice and one mapped once; two KSM PTEs: only the first can be KSM
    assert count_solutions([{a: 2}, {a: 1}], [1, 1], exact(a=2)) == ([[1, 0]], True)
    assert solve_ksm_frames({7: {a: 1}, 8: {a: 2}}, exact(a=2)) == ({8}, set())
    # two KSM PTEs in a, one in b: the frame in both and the frame only in a
    sols, complete = count_solutions([{a: 1, b: 1}, {a: 1}], [1, 2], exact(a=2, b=1))
    assert complete and sols == [[1, 1]]
    # counts no choice can meet
    assert count_solutions([{a: 1}], [3], exact(a=4)) == ([], True)
    assert solve_ksm_frames({1: {a: 1}}, exact(a=4)) is None
    # a range (part of a VMA unseen): one or two of three interchangeable frames
    sols, complete = count_solutions([{a: 1}], [3], {a: (1, 2)})
    assert complete and sols == [[2], [1]]
    # the search is bounded
    sols, complete = count_solutions([{a: 1}] * 12, [1] * 12, exact(a=6), limit=5)
    assert len(sols) == 5 and not complete


def _tie_case() -> tuple[dict[str, Any], dict[str, Any]]:
    """P1's copy-on-write pages (shared with its child P2) merge; P1 exits: in P2 the KSM
    frame and the left-over frames are each mapped once, dirty and not exclusive."""
    doc = {
        "format": "ksm-scenario/1",
        "name": "tie",
        "kernel": "6.12",
        "steps": [
            {"op": "spawn", "proc": "P1"},
            {"op": "mmap", "proc": "P1", "vma": "m", "pages": 3},
            {"op": "write", "proc": "P1", "vma": "m", "content": "B"},
            {"op": "fork", "proc": "P1", "child": "P2"},
            {"op": "madvise", "proc": "P1", "vma": "m", "advice": "MADV_MERGEABLE"},
            {"op": "scan", "passes": 3},
            {"op": "exit", "proc": "P1"},
            {"op": "checkpoint", "name": "c"},
        ],
    }
    strace, err = fuzz.run_sim(doc)
    assert strace is not None, err
    return doc, strace


def test_ties_are_judged_by_their_ksm_count_only(tmp_path: Path) -> None:
    doc, strace = _tie_case()
    sim_pages = strace["checkpoints"][0]["pages"]["P2"]["m"]
    assert sorted(sim_pages.split()) == ["A", "A", "K0"]  # one KSM frame left in P2
    ktrace = copy.deepcopy(strace)
    tokens = sim_pages.split()
    ktrace["checkpoints"][0]["pages"]["P2"]["m"] = (
        " ".join(reversed(tokens)) if tokens != tokens[::-1] else "A A K0"
    )
    assert fuzz.judge(doc, (ktrace, None)).kind == "diff"  # no ties recorded: a diff
    ktrace["meta"] = {
        "page_classification": {
            "ambiguous_pages": [
                {"checkpoint": 0, "name": "c", "proc": "P2", "vma": "m", "pages": [0, 1, 2]}
            ]
        }
    }
    outcome = fuzz.judge(doc, (ktrace, None))
    assert outcome.kind == "tied" and outcome.diffs
    ktrace["checkpoints"][0]["pages"]["P2"]["m"] = "K0 K1 A"  # two KSM pages: too many
    assert fuzz.judge(doc, (ktrace, None)).kind == "diff"
    left = fuzz.without_ties(ktrace, strace)
    assert left == ["checkpoint 0 pages.P2.m: 2 KSM page(s) among the tied pages != 1"]
    ktrace["checkpoints"][0]["global"]["pages_shared"] = 99  # ties never hide counters
    ktrace["checkpoints"][0]["pages"]["P2"]["m"] = sim_pages
    assert fuzz.judge(doc, (ktrace, None)).kind == "diff"
    where = fuzz.save_tie(tmp_path, 7, doc, outcome)
    assert where.name == "0007-tied" and (where / "diff.txt").read_text().startswith("checkpoint 0")
    assert json.loads((where / "kernel.json").read_text())["meta"]["page_classification"]
    result = fuzz.FuzzResult(agree=100, tied=3)
    assert result.summary == "100 agree, 0 disagree, 3 agree only up to ties userspace cannot see"
