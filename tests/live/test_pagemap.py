"""app/kernel/host/pagemap.py, the live page map: mergeable VMAs, classification, paging."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest

from app.kernel.host import pagemap
from app.kernel.host.procfs import KPF_ANON, KPF_DIRTY, KPF_KSM, ProcessGone

from .conftest import WORKER_PID, Tree

#: the worker's layout (ksm_worker.py) after ksmd merged it
EXPECTED = "K" * 64 + "Z" * 32 + "A" * 16 + "-" * 16


def test_only_mergeable_vmas_are_listed(host_tree: Tree) -> None:
    smaps = (host_tree.proc_root / str(WORKER_PID) / "smaps").read_text()
    (vma,) = pagemap.parse_smaps_mergeable(smaps)
    assert (vma.start, vma.end, vma.pages, vma.ksm_kb) == (0x200000000, 0x200080000, 128, 256)
    assert smaps.count("VmFlags:") > 10


def test_pages_are_classified(host_tree: Tree) -> None:
    pm = pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 0, 1000)
    assert pm.available and pm.reason is None
    assert (pm.total_pages, pm.offset, pm.limit) == (128, 0, 128)
    assert pm.cells == EXPECTED
    assert pm.counts == {"-": 16, "Z": 32, "K": 64, "A": 16, "F": 0}
    assert pm.classification == "KPF_KSM"


def test_same_physical_page_same_group(host_tree: Tree) -> None:
    pm = pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 0, 128)
    groups = dict(pm.groups)
    assert sorted(groups) == list(range(64))
    assert len({groups[i] for i in range(32)}) == 1  # the 32 "A" pages: one KSM page
    assert len({groups[i] for i in range(32, 64)}) == 1
    assert groups[0] != groups[32]


def test_a_window_of_pages(host_tree: Tree) -> None:
    pm = pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 60, 10)
    assert (pm.offset, pm.limit, pm.cells) == (60, 10, "KKKKZZZZZZ")
    assert [i for i, _ in pm.groups] == [0, 1, 2, 3]
    past = pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 500, 10)
    assert (past.offset, past.limit, past.cells) == (128, 0, "")


def test_old_kernel_without_smaps_ksm_line(old_tree: Tree) -> None:
    pm = pagemap.read_page_map(old_tree.proc_root, WORKER_PID, 0, 128)
    assert pm.vmas[0].ksm_kb is None
    assert (pm.cells, pm.classification) == (EXPECTED, "KPF_KSM")


def test_kpf_ksm_on_every_anon_page_falls_back_to_dirty(host_tree: Tree) -> None:
    """6.10-era kernels (6.12) set KPF_KSM on every anonymous page (ksm-model.md §11)."""
    for pfn, flags in host_tree.kpageflags.items():
        if flags >> KPF_ANON & 1:
            host_tree.kpageflags[pfn] = flags | 1 << KPF_KSM
    host_tree.write_binaries()
    pm = pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 0, 128)
    assert pm.cells == EXPECTED
    assert pm.classification.startswith("KPF_ANON+KPF_DIRTY")


def _as_6_12(tree: Tree, dirty_anon: bool) -> None:
    """KPF_KSM on every anonymous page (6.12); ``dirty_anon``: the 16 ``A`` pages PG_dirty,
    as pages a merge left behind copy-on-write are."""
    a_pfns = {e & pagemap.PM_PFN_MASK for i, e in enumerate(tree.pagemap) if EXPECTED[i] == "A"}
    for pfn, flags in tree.kpageflags.items():
        if flags >> KPF_ANON & 1:
            flags |= 1 << KPF_KSM
            if dirty_anon and pfn in a_pfns:
                flags |= 1 << KPF_DIRTY
            tree.kpageflags[pfn] = flags
    tree.write_binaries()


def test_6_12_dirty_left_over_pages_are_not_taken_for_ksm_pages(host_tree: Tree) -> None:
    _as_6_12(host_tree, dirty_anon=True)
    pm = pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 0, 128)
    # the dirty rule alone would call the 16 A pages KSM; smaps says 64 KSM PTEs: the two
    # frames mapped 32 times each, and nothing else
    assert pm.cells == EXPECTED
    assert "smaps" in pm.classification and "?" not in pm.classification
    # a window cutting the VMA (which alone shows no sign of the unreliable bit: the server
    # remembers it of this kernel): the VMA is judged whole, the window gets its part
    part = pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 90, 20)
    assert part.cells == EXPECTED[90:110]


def test_6_12_pages_no_interface_can_tell_apart_are_shown_as_such(host_tree: Tree) -> None:
    _as_6_12(host_tree, dirty_anon=True)
    smaps = host_tree.proc_root / str(WORKER_PID) / "smaps"
    text = smaps.read_text()
    smaps.write_text(text.replace("KSM:                 256 kB", "KSM:                 260 kB", 1))
    pm = pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 0, 128)
    # 65 KSM PTEs: the two big frames and one of the 16 dirty pages mapped once: which one,
    # no interface says
    assert pm.cells == "K" * 64 + "Z" * 32 + "?" * 16 + "-" * 16
    assert pm.counts["?"] == 16 and "no interface tells which" in pm.classification
    assert len(pm.groups) == 64


def test_unreadable_pagemap_says_why(host_tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.open

    def fake_open(path: Any, flags: int, *args: Any) -> int:
        if str(path).endswith("/pagemap"):
            raise PermissionError(13, "Permission denied")
        return real(path, flags, *args)

    monkeypatch.setattr(pagemap.os, "open", fake_open)
    pm = pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 0, 128)
    assert not pm.available and pm.cells == ""
    assert pm.reason is not None and "permission denied" in pm.reason and "root" in pm.reason
    assert pm.total_pages == 128  # the VMAs are still listed


def test_hidden_pfns_say_why(host_tree: Tree) -> None:
    host_tree.pagemap = [e & ~pagemap.PM_PFN_MASK for e in host_tree.pagemap]
    host_tree.write_binaries()
    pm = pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 0, 128)
    assert not pm.available
    assert pm.reason is not None and "CAP_SYS_ADMIN" in pm.reason


def test_missing_kpageflags_says_why(host_tree: Tree) -> None:
    (host_tree.proc_root / "kpageflags").unlink()
    pm = pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 0, 128)
    assert not pm.available
    assert pm.reason == "/proc/kpageflags does not exist on this kernel"


def test_no_mergeable_vma(host_tree: Tree) -> None:
    (host_tree.proc_root / "1" / "smaps").write_text(
        "00400000-00401000 r-xp 00000000 fe:00 1 /sbin/init\nVmFlags: rd ex mr mw me \n"
    )
    pm = pagemap.read_page_map(host_tree.proc_root, 1, 0, 128)
    assert not pm.available and pm.total_pages == 0
    assert pm.reason is not None and "no mergeable VMA" in pm.reason


def test_unknown_process(host_tree: Tree) -> None:
    with pytest.raises(ProcessGone):
        pagemap.read_page_map(host_tree.proc_root, 999999, 0, 128)


def test_process_gone_between_smaps_and_pagemap(host_tree: Tree) -> None:
    (host_tree.proc_root / str(WORKER_PID) / "pagemap").unlink()
    with pytest.raises(ProcessGone):
        pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 0, 128)


def test_short_pagemap_read_means_gone(host_tree: Tree) -> None:
    path = host_tree.proc_root / str(WORKER_PID) / "pagemap"
    os.truncate(path, host_tree.address // pagemap.PAGE_SIZE * 8 + 80)
    with pytest.raises(ProcessGone):
        pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 0, 128)


def test_kpageflags_runs_are_read_in_few_preads(
    host_tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.pread

    def counting_pread(fd: int, n: int, off: int) -> bytes:
        calls.append(n)
        return real(fd, n, off)

    monkeypatch.setattr(pagemap.os, "pread", counting_pread)
    pfns = set(host_tree.kpageflags)
    flags = pagemap.read_kpageflags(host_tree.proc_root, pfns)
    assert flags == host_tree.kpageflags
    assert len(calls) < len(pfns)


def test_reader_never_writes(host_tree: Tree) -> None:
    def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
        return {
            str(p): (p.stat().st_mtime_ns, p.read_bytes()[:4096])
            for p in root.rglob("*")
            if p.is_file()
        }

    before = snapshot(host_tree.root)
    pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 0, 128)
    assert snapshot(host_tree.root) == before


def test_several_vmas_form_one_sequence(host_tree: Tree) -> None:
    """Split the worker's VMA in two, the second moved to another address."""
    smaps_path = host_tree.proc_root / str(WORKER_PID) / "smaps"
    second = 0x300000000
    extra = (
        f"{second:x}-{second + 64 * 4096:x} rw-p 00000000 00:00 0 \nKSM: 0 kB\n"
        "VmFlags: rd wr mr mw me ac nh mg \n"
    )
    text = smaps_path.read_text().replace("200000000-200080000", "200000000-200040000")
    smaps_path.write_text(text + extra)
    with open(host_tree.proc_root / str(WORKER_PID) / "pagemap", "r+b") as f:
        f.seek(second // pagemap.PAGE_SIZE * 8)
        f.write(struct.pack("<64Q", *host_tree.pagemap[64:]))
    pm = pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 0, 128)
    assert [(v.start, v.first_page, v.pages) for v in pm.vmas] == [
        (0x200000000, 0, 64),
        (second, 64, 64),
    ]
    assert pm.cells == EXPECTED and pm.classification == "KPF_KSM"
    window = pagemap.read_page_map(host_tree.proc_root, WORKER_PID, 60, 10)
    assert window.cells == "KKKKZZZZZZ"  # a window across the two VMAs
