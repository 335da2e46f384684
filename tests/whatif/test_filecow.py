"""Private file mappings (issue 17): their copy-on-write pages in captures, the page-cache
pages ksmd walks, and what those cost in the time model."""

from __future__ import annotations

import json
import subprocess
import sys
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.kernel.capture import capture_processes
from app.whatif.predict import predict
from sim.capture import (
    FILE,
    PRESENT,
    SWAPPED,
    Capture,
    CapturedMapping,
    CapturedProcess,
    CaptureError,
    load_capture,
)
from sim.timemodel import (
    CALIBRATION_FORMAT,
    MACHINE_COSTS,
    BatchClock,
    CpuCosts,
    load_calibration,
)

from .test_timemodel import COSTS, _kernel

CHILD = Path(__file__).with_name("filechild.py")


def file_capture(merge_any: bool = True, mergeable: bool = False) -> Capture:
    """Two processes, each an anonymous mapping (2 pages) and a private file mapping
    (6 pages: a copy-on-write page of class 5, two page-cache pages, a hole, a unique COW
    page, one more page-cache page), and a file mapping with page-cache pages only."""

    def proc(pid: int, unique: int) -> tuple[CapturedProcess, list[int], list[int]]:
        p = CapturedProcess(
            pid,
            "py",
            "/bin/py",
            "",
            merge_any,
            None,
            [
                CapturedMapping(0x1000, 2),
                CapturedMapping(0x10000, 6, "/usr/lib/libx.so", mergeable, file=True),
                CapturedMapping(0x20000, 3, "/usr/lib/liby.so", mergeable, file=True),
            ],
        )
        flags = [PRESENT, PRESENT] + [PRESENT, FILE, FILE, 0, PRESENT, FILE] + [FILE, FILE, 0]
        cls = [1, 2] + [5, 0, 0, 0, unique, 0] + [0, 0, 0]
        return p, flags, cls

    a, fa, ca = proc(10, 3)
    b, fb, cb = proc(11, 4)
    return Capture([a, b], array("B", fa + fb), array("I", ca + cb), classes=6)


def test_round_trip_with_file_mappings(tmp_path: Path) -> None:
    cap = file_capture()
    assert cap.version == 2
    path = tmp_path / "f.ksmcap"
    cap.save(path)
    back = load_capture(path)
    assert back.to_bytes() == cap.to_bytes()
    assert [m.file for _, m in back.mappings()] == [False, True, True] * 2
    assert back.stats() == cap.stats()
    s = back.stats()
    assert (s["present"], s["file_pages"], s["cow"], s["file_mappings"]) == (8, 10, 4, 4)
    # anonymous only: version 1, as before (what older readers read)
    anon = Capture(
        [CapturedProcess(1, "a", mappings=[CapturedMapping(0, 2)])],
        array("B", [PRESENT, 0]),
        array("I", [1, 0]),
        classes=2,
    )
    assert anon.version == 1 and b'"version":1' in anon.to_bytes()
    assert b'"file"' not in anon.to_bytes()
    assert load_capture(anon.to_bytes()).version == 1


def test_a_version_1_file_still_loads() -> None:
    """A file as the first ksmlab wrote it (header and columns built by hand here)."""
    head = {
        "format": "ksm-capture/1",
        "version": 1,
        "created": "2026-12-01T00:00:00Z",
        "host": {"kernel": "6.18.44", "machine": "x86_64", "page_size": 4096},
        "snapshots": 1,
        "period_s": 0.0,
        "pages": 3,
        "classes": 2,
        "ksm_rule": "KPF_KSM",
        "notes": [],
        "processes": [
            {
                "pid": 7,
                "comm": "a",
                "exe": "/bin/a",
                "cgroup": "/",
                "merge_any": True,
                "ksm_stat": None,
                "mappings": [{"start": 4096, "pages": 3, "name": "[heap]", "mergeable": True}],
            }
        ],
        "columns": [
            {"name": "flags", "type": "B", "bytes": 3, "zlib": False},
            {"name": "class", "type": "I", "bytes": 12, "zlib": False},
        ],
    }
    raw = json.dumps(head).encode()
    data = (
        b"KSMCAPTURE\n"
        + len(raw).to_bytes(4, "little")
        + raw
        + bytes([PRESENT, PRESENT, 0])
        + b"".join(c.to_bytes(4, "little") for c in (1, 0, 0))
    )
    cap = load_capture(data)
    assert cap.version == 1 and cap.pages == 3
    [(_, m)] = list(cap.mappings())
    assert not m.file and m.mergeable and m.name == "[heap]"
    assert cap.stats()["file_pages"] == 0 and cap.walked_file_pages() == 0
    assert b'"version":1' in cap.to_bytes()


def test_version_and_flag_errors() -> None:
    good = file_capture().to_bytes()
    assert b'"version":2' in good
    with pytest.raises(CaptureError, match="version"):
        load_capture(good.replace(b'"version":2', b'"version":3'))
    # a version 1 file knows neither file mappings nor the FILE flag
    with pytest.raises(CaptureError, match=r"mappings\[1\]\.file"):
        load_capture(good.replace(b'"version":2', b'"version":1'))
    cap = file_capture()
    cap.flags[3] = FILE | PRESENT
    with pytest.raises(CaptureError, match="field 'flags'"):
        load_capture(cap.to_bytes())
    cap = file_capture()
    cap.flags[3] = 128
    with pytest.raises(CaptureError, match="unknown flag bits 0x80"):
        load_capture(cap.to_bytes())


def test_walked_file_pages_follow_anon_vma_and_merge_mode() -> None:
    # libx has copy-on-write pages (an anon_vma): its 3 page-cache pages are walked;
    # liby never had one: ksmd skips the whole VMA
    assert file_capture(merge_any=True).walked_file_pages("captured") == 6
    assert file_capture(merge_any=False).walked_file_pages("captured") == 0
    assert file_capture(merge_any=False, mergeable=True).walked_file_pages("captured") == 6
    assert file_capture(merge_any=False).walked_file_pages("all") == 6
    assert file_capture(merge_any=False).walked_file_pages("prctl") == 6
    cap = file_capture()
    for i in (2, 6):  # process 10's copy-on-write pages swapped out: still an anon_vma
        cap.flags[i] = SWAPPED
    assert cap.walked_file_pages("captured") == 6


def test_prediction_merges_copy_on_write_pages_and_charges_the_walk() -> None:
    cap = file_capture()
    costs = CpuCosts(first_ns=1000, later_ns=5000, pass_ns=100_000, file_ns=70)
    pred = predict(cap, "6.18", {"pages_to_scan": 1000}, duration_s=2.0, costs=costs)
    # the two processes' class-5 COW pages merge, and their class-1 and class-2 anon pages
    assert (pred.pages_shared, pred.pages_sharing) == (3, 3)
    assert pred.walked_file_pages == 6
    assert pred.summary()["walked_file_pages"] == 6
    plain = predict(
        cap, "6.18", {"pages_to_scan": 1000}, duration_s=2.0, costs=CpuCosts(1000, 5000, 0)
    )
    assert pred.cpu_ns > plain.cpu_ns


def test_file_pages_are_charged_once_per_pass() -> None:
    costs = CpuCosts(**{**COSTS.as_dict(), "file_ns": 50})  # type: ignore[arg-type]
    k = _kernel(100, "unique")
    walked = BatchClock(k, costs, walk_pages=1000)
    k2 = _kernel(100, "unique")
    plain = BatchClock(k2, costs)
    for clock, kern in ((walked, k), (plain, k2)):
        clock.time.now_ns = 0
        for _ in range(3):
            clock.before()
            clock.after(kern.scan_batch())
    assert walked.time.passes == plain.time.passes == 3
    assert walked.time.file == 3000 and plain.time.file == 0
    assert walked.time.cpu_ns - plain.time.cpu_ns == 3 * 1000 * 50
    assert walked.time.now_ns - plain.time.now_ns == 3 * 1000 * 50


def test_a_calibration_without_file_ns_gets_this_machines(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    old = {k: v for k, v in MACHINE_COSTS.as_dict().items() if k != "file_ns"}
    path.write_text(json.dumps({"format": CALIBRATION_FORMAT, "costs": old}))
    assert load_calibration(path).file_ns == MACHINE_COSTS.file_ns > 0
    path.write_text(json.dumps({"format": CALIBRATION_FORMAT, "costs": {**old, "file_ns": 9}}))
    assert load_calibration(path).file_ns == 9
    assert CpuCosts().file_ns == 0  # the sweep's historical figures charge no walk


@pytest.fixture
def file_child(tmp_path: Path) -> Iterator[tuple[int, int]]:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    addr = int(proc.stdout.readline().split()[0])
    try:
        yield proc.pid, addr
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


def test_real_child_with_a_private_file_mapping(file_child: tuple[int, int]) -> None:
    pid, addr = file_child
    cap = capture_processes([pid])
    [m] = [m for _, m in cap.mappings() if m.start == addr]
    assert m.file and m.mergeable and m.pages == 256
    assert m.name.endswith("/filechild.data")
    col = range(m.first, m.first + m.pages)
    flags = [cap.flags[i] for i in col]
    cls = [cap.cls[i] for i in col]
    # copy-on-write pages: anonymous, read and classed
    assert all(flags[i] & PRESENT and not flags[i] & FILE for i in (0, 1, 2))
    assert cls[0] == cls[1] != 0 and cls[2] == 0
    # read pages: page-cache pages, flagged FILE, not read (class 0, not present)
    assert all(flags[i] == FILE and cls[i] == 0 for i in range(3, 16))
    # far from the pages touched (fault-around maps at most 16 pages): nothing
    assert all(flags[i] == 0 for i in range(64, 256))
    # the pages between: page-cache pages mapped by fault-around, or nothing
    assert all(flags[i] in (0, FILE) for i in range(16, 64))
    assert cap.stats()["cow"] >= 3
    walked = sum(1 for f in flags if f == FILE)
    # only this mapping is mergeable (the child's libraries are not: no merge-any)
    assert cap.walked_file_pages("captured") == walked
    # the old behaviour: anonymous mappings only, version 1
    anon = capture_processes([pid], files=False)
    assert anon.version == 1 and not any(m.start == addr for _, m in anon.mappings())
