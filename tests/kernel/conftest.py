"""Fixtures for the kernel replayer tests.

Tests that touch the real kernel use the ``kernel`` fixture: they are skipped unless
``KSMLAB_KERNEL_TESTS=1``, and then they FAIL (never skip) when the kernel cannot be used
(not root, no writable ``/sys/kernel/mm/ksm``, another KSM user). Each of them also checks
that ``/sys/kernel/mm/ksm/*`` reads the same after the test as before it (every file except
``pages_scanned`` and ``pages_skipped``, which only ever grow; ``full_scans`` when it was 0
before, since the cleanup's ``run=2`` resets it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.kernel.guard import Refusal, check_privileges, host_lock, lock_file_path
from app.kernel.host.procfs import ProcFs
from app.kernel.sysfs import DEFAULT_KNOBS, KsmSysfs

KERNEL_TESTS = os.environ.get("KSMLAB_KERNEL_TESTS") == "1"
MONOTONIC = ("pages_scanned", "pages_skipped")


def ksm_snapshot(check_alone: bool = False) -> dict[str, str]:
    """What ``cat /sys/kernel/mm/ksm/*`` shows, read while holding the host lock (so not
    in the middle of somebody else's replay); optionally fails if another KSM user exists."""
    sysfs = KsmSysfs()
    with host_lock(lock_file_path()):
        if check_alone:
            others = ProcFs().ksm_users(exclude=[os.getpid()])
            if others:
                pytest.fail(f"KSMLAB_KERNEL_TESTS=1 but another process uses KSM: {others[:3]}")
        return {name: (sysfs.read_text(name) or "").strip() for name in sysfs.names()}


def comparable(snap: dict[str, str], before: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in snap.items() if k not in MONOTONIC}
    if before.get("full_scans") not in (None, "0"):
        out.pop("full_scans", None)
    return out


@pytest.fixture
def kernel() -> Iterator[KsmSysfs]:
    if not KERNEL_TESTS:
        pytest.skip("kernel tests run with KSMLAB_KERNEL_TESTS=1 (root, writable KSM sysfs)")
    sysfs = KsmSysfs()
    try:
        check_privileges(sysfs)
    except Refusal as exc:
        pytest.fail(f"KSMLAB_KERNEL_TESTS=1 but the kernel is unusable: {exc}")
    before = ksm_snapshot(check_alone=True)
    yield sysfs
    after = ksm_snapshot()
    assert comparable(after, before) == comparable(before, before), (
        "/sys/kernel/mm/ksm differs after the test"
    )


@pytest.fixture
def fake_sysfs(tmp_path: Path) -> KsmSysfs:
    """A temporary directory standing in for /sys/kernel/mm/ksm (6.18's files)."""
    root = tmp_path / "ksm"
    root.mkdir()
    knobs: dict[str, object] = {
        **DEFAULT_KNOBS,
        "advisor_max_cpu": 70,
        "advisor_max_pages_to_scan": 30000,
        "advisor_min_pages_to_scan": 500,
        "advisor_target_scan_time": 200,
    }
    for name, value in knobs.items():
        (root / name).write_text(f"{value}\n")
        (root / name).chmod(0o644)
    (root / "advisor_mode").write_text("[none] scan-time\n")
    (root / "advisor_mode").chmod(0o644)
    for name in (
        "pages_shared",
        "pages_sharing",
        "pages_unshared",
        "pages_volatile",
        "full_scans",
        "general_profit",
        "stable_node_chains",
        "stable_node_dups",
        "pages_scanned",
        "ksm_zero_pages",
        "pages_skipped",
    ):
        (root / name).write_text("0\n")
        (root / name).chmod(0o444)
    return KsmSysfs(root)
