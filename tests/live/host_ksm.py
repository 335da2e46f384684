"""Running the host's ksmd for the live view's kernel tests and fixture recording.

Reuses the kernel replayer's guard (``app/kernel/guard.py``): the host lock
(``/var/tmp/ksmlab-kernel.lock``, so two kernel users never collide) and the knob guard,
which saves every writable knob (in memory and in the replayer's state file, so
``ksmlab replay --restore`` can repair a killed run) and restores them in ``finally``
(run=2 first, ``run`` last: ksmd is never left running).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("ksm_worker.py")

#: knobs that make ksmd merge the worker's pages within a second or two
MERGE_KNOBS: dict[str, int | str] = {
    "advisor_mode": "none",
    "pages_to_scan": 1000,
    "sleep_millisecs": 10,
    "use_zero_pages": 1,
    "smart_scan": 0,
}


@contextmanager
def ksm_host(knobs: dict[str, int | str], lock_timeout: float = 900) -> Iterator[Any]:
    """Hold the host lock, save every knob, write ``knobs`` (ksmd stopped); restore at exit.

    Yields the ``KsmSysfs``; the caller writes ``run=1`` when its workers are ready.
    """
    from app.kernel.guard import KnobGuard, host_lock, lock_file_path, state_file_path
    from app.kernel.sysfs import KsmSysfs

    sysfs = KsmSysfs()
    with host_lock(lock_file_path(), timeout=lock_timeout):
        guard = KnobGuard(sysfs, state_file_path())
        guard.save()
        try:
            sysfs.write("run", 0)
            for name, value in knobs.items():
                if sysfs.exists(name) and sysfs.read(name) != value:
                    sysfs.write(name, value)
            yield sysfs
        finally:
            problems = guard.restore()
            assert not problems, f"knobs not restored: {problems}"
            assert sysfs.knobs() == guard.saved


@contextmanager
def worker() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A running ksm_worker.py: ``(process, mapping address)``; closed and reaped at exit."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == ["ready"], f"worker failed: {line}"
        yield proc, int(line[1], 16)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_merged(pid: int, merging: int, zero: int, timeout: float = 60) -> dict[str, int]:
    """Poll ``/proc/PID/ksm_stat`` until the worker's pages are merged; returns the stat."""
    from app.kernel.host.procfs import parse_ksm_stat

    deadline = time.monotonic() + timeout
    stat: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stat = parse_ksm_stat(Path(f"/proc/{pid}/ksm_stat").read_text())
        if stat.get("ksm_merging_pages") == merging and stat.get("ksm_zero_pages") == zero:
            return stat
        time.sleep(0.1)
    raise AssertionError(f"not merged after {timeout} s: {stat}")
