"""The capture format (round trip, validation, privacy) and the real reader on a child."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from app.kernel.capture import CaptureFailed, capture_processes
from sim.capture import (
    KSM_PAGE,
    KSM_SHIFT,
    PRESENT,
    Capture,
    CapturedMapping,
    CapturedProcess,
    CaptureError,
    ClassTable,
    load_capture,
)

from .conftest import Child

PAGE = 4096
ROOT = os.geteuid() == 0


def small_capture(changes: bool = False) -> Capture:
    procs = [
        CapturedProcess(
            10, "a", "/bin/a", "/x", False, {"ksm_zero_pages": 0}, [CapturedMapping(0x1000, 4)]
        ),
        CapturedProcess(
            11, "b", "/bin/b", "/x", True, None, [CapturedMapping(0x9000, 2, "[heap]", True)]
        ),
    ]
    flags = array("B", [PRESENT, PRESENT, PRESENT | KSM_PAGE << KSM_SHIFT, 0, PRESENT, PRESENT])
    cls = array("I", [0, 1, 2, 0, 1, 2])
    ch = array("H", [0, 3, 0, 0, 1, 0]) if changes else array("H")
    return Capture(procs, flags, cls, ch, classes=3, snapshots=2 if changes else 1, period_s=2.0)


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip(tmp_path: Path, compress: bool) -> None:
    cap = small_capture(changes=True)
    path = tmp_path / "c.ksmcap"
    cap.save(path, compress=compress)
    back = load_capture(path)
    assert back.to_bytes() == cap.to_bytes()
    assert [p.to_dict() for p in back.processes] == [p.to_dict() for p in cap.processes]
    assert back.processes[1].mappings[0].first == 4
    assert back.stats() == cap.stats()
    s = back.stats()
    assert (s["present"], s["zero"], s["duplicate"], s["ksm_pages"], s["changing"]) == (
        5,
        1,
        4,
        1,
        2,
    )


def test_loader_errors(tmp_path: Path) -> None:
    good = small_capture().to_bytes()
    cases = {
        b"hello": "not a capture file",
        good[:14]: "truncated",
        good[:-3]: "cut short",
        good + b"x": "unexpected bytes",
    }
    for data, words in cases.items():
        with pytest.raises(CaptureError, match=words):
            load_capture(data)
    bad = small_capture()
    bad.cls[0] = 7
    with pytest.raises(CaptureError, match="class 7"):
        load_capture(bad.to_bytes())
    text = good.replace(b'"version":1', b'"version":9')
    with pytest.raises(CaptureError, match="version"):
        load_capture(text)
    with pytest.raises(CaptureError, match="cannot read"):
        load_capture(tmp_path / "missing")


def test_class_table_is_salted() -> None:
    pages = [os.urandom(PAGE) for _ in range(50)]
    data = [pages[i % 50] for i in range(100)] + [bytes(PAGE)]
    present = bytearray(b"\x01" * len(data))
    ids = []
    for _ in range(2):
        table = ClassTable(os.urandom(32))
        digests = array("q", [table.digest(p) for p in data])
        cls, n = table.renumber(digests, present)
        assert n == 51
        assert cls[-1] == 0  # the zero page is class 0
        assert all(cls[i] == cls[i + 50] for i in range(50))  # same bytes, same class
        assert len(set(cls[:50])) == 50
        ids.append(list(cls[:50]))
    assert ids[0] != ids[1]  # another salt: another numbering


def _where(cap: Capture, child: Child) -> tuple[CapturedMapping, int]:
    for _, m in cap.mappings():
        if m.start <= child.addr < m.start + m.pages * PAGE:
            return m, m.first + (child.addr - m.start) // PAGE
    raise AssertionError("the child's mapping was not captured")


def test_real_child(child: Callable[..., Child]) -> None:
    c = child(400)
    cap = capture_processes([c.pid])
    _, first = _where(cap, c)
    flags, cls = cap.flags, cap.cls
    kinds = [i % 4 for i in range(c.pages)]
    col = [first + i for i in range(c.pages)]
    assert all(flags[col[i]] & PRESENT for i in range(c.pages) if kinds[i] != 3)
    assert not any(flags[col[i]] & PRESENT for i in range(c.pages) if kinds[i] == 3)
    assert {cls[col[i]] for i in range(c.pages) if kinds[i] == 0} == {0}
    dups = {cls[col[i]] for i in range(c.pages) if kinds[i] == 1}
    assert len(dups) == 1 and 0 not in dups
    uniques = [cls[col[i]] for i in range(c.pages) if kinds[i] == 2]
    assert len(set(uniques)) == 100 and not set(uniques) & (dups | {0})
    counts = Counter(cls[i] for i in range(cap.pages) if flags[i] & PRESENT)
    assert all(counts[u] == 1 for u in uniques)
    proc = cap.processes[0]
    assert proc.pid == c.pid and proc.comm.startswith("python")
    assert cap.ksm_rule == ("KPF_KSM" if ROOT else "unknown (not root)") or ROOT
    # a second capture of the same memory: the same partition, another numbering
    again = capture_processes([c.pid])
    assert again.cls[col[1]] == again.cls[col[5]]
    assert [again.cls[col[i]] for i in range(0, 12)] != [cls[col[i]] for i in range(0, 12)]


def test_snapshots_count_changes(child: Callable[..., Child]) -> None:
    c = child(200, change=10)
    cap = capture_processes([c.pid], snapshots=3, interval_s=0.3)
    _, first = _where(cap, c)
    assert cap.snapshots == 3 and 0.5 < cap.period_s < 2.0
    changed = [cap.changes[first + 4 * g + 2] for g in range(10)]
    assert all(n == 2 for n in changed)
    assert not any(cap.changes[first + 4 * g + 2] for g in range(10, 50))
    back = load_capture(cap.to_bytes())
    assert list(back.changes) == list(cap.changes)


def test_errors(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(CaptureFailed, match=f"process {gone.pid}"):
        capture_processes([gone.pid])
    with pytest.raises(CaptureFailed, match="kernel thread"):
        capture_processes([2])  # kthreadd


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_cli(tmp_path: Path, child: Callable[..., Child]) -> None:
    out = tmp_path / "c.ksmcap"
    r = run_cli("capture", "--name", "^no-such-process-x$", "-o", str(out))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "no process matched" in r.stderr
    r = run_cli("capture", "--pid", "2", "-o", str(out))
    assert r.returncode == 2 and "kernel thread" in r.stderr
    c = child(100)
    r = run_cli("capture", "--pid", str(c.pid), "-o", str(out), "--no-progress")
    if not ROOT:  # the CLI is not our child's parent: no permission
        assert r.returncode == 2 and "permission" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    assert "1 processes" in r.stdout
    assert load_capture(out).processes[0].pid == c.pid
    r = run_cli(
        "predict",
        str(out),
        "--duration",
        "5",
        "--merge",
        "all",
        "--knob",
        "use_zero_pages=1",
        "--csv",
        str(tmp_path / "c.csv"),
        "--html",
        str(tmp_path / "c.html"),
    )
    assert r.returncode == 0, r.stderr
    assert "savings after 5 s" in r.stdout
    rows = (tmp_path / "c.csv").read_text().splitlines()
    assert rows[0].startswith("t_s,pages_shared,pages_sharing,ksm_zero_pages,general_profit")
    assert len(rows) == 7  # header + t = 0..5
    html = (tmp_path / "c.html").read_text()
    assert "Predicted KSM savings" in html and 'src="http' not in html  # offline
    r = run_cli("predict", str(out), "--knob", "pages_to_scan=-3")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    (tmp_path / "bad").write_bytes(b"nope")
    r = run_cli("predict", str(tmp_path / "bad"))
    assert r.returncode == 2 and "not a capture file" in r.stderr


def test_a_small_file_claiming_a_huge_capture_is_refused_before_decompressing() -> None:
    import json
    import struct
    import zlib

    from sim.capture import MAGIC, CaptureTooLarge

    pages = 1 << 27
    bomb = zlib.compress(bytes(pages), 9)  # 128 MiB of flags in about 130 KB
    head = {
        "format": "ksm-capture/1",
        "version": 1,
        "pages": pages,
        "classes": 1,
        "snapshots": 1,
        "processes": [{"pid": 1, "comm": "x", "mappings": [{"start": 0, "pages": pages}]}],
        "columns": [{"name": "flags", "type": "B", "bytes": len(bomb), "zlib": True}],
    }
    raw = json.dumps(head).encode()
    data = MAGIC + struct.pack("<I", len(raw)) + raw + bomb
    with pytest.raises(CaptureTooLarge, match="at most 1000"):
        load_capture(data, max_pages=1000)


def test_find_pids_by_name_and_cgroup(tmp_path: Path) -> None:
    from app.kernel.capture import find_pids, process_cgroup

    exe = tmp_path / "ksmcap-child"
    exe.symlink_to(sys.executable)
    proc = subprocess.Popen([str(exe), "-c", "import time; time.sleep(60)"])
    try:
        for _ in range(50):
            if Path(f"/proc/{proc.pid}/comm").read_text().strip() == "ksmcap-child":
                break
            time.sleep(0.05)
        assert find_pids(name="^ksmcap-child$") == [proc.pid]
        mine = process_cgroup(Path("/proc"), os.getpid())
        assert proc.pid in find_pids(cgroup=mine)
        assert os.getpid() not in find_pids(cgroup=mine)  # never the capturing process
        assert find_pids(cgroup="/no/such/group") == []
    finally:
        proc.kill()
        proc.wait()


def test_processes_are_captured_in_start_order(child: Callable[..., Child]) -> None:
    """KSM scans its users in the order they joined it; start order stands for it, whatever
    the order the pids were given in."""
    a = child(8)
    b = child(8)
    cap = capture_processes([b.pid, a.pid, b.pid])
    assert [p.pid for p in cap.processes] == [a.pid, b.pid]
