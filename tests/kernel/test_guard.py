"""Knob save/restore, state file, lock and refusals, against a temporary sysfs (no root)."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from app.kernel import guard
from app.kernel.guard import (
    KnobGuard,
    LockTimeout,
    Refusal,
    check_privileges,
    host_lock,
    restore_from_state_file,
    restore_knobs,
)
from app.kernel.sysfs import KsmSysfs, parse_value


def test_parse_value() -> None:
    assert parse_value("100\n") == 100
    assert parse_value("-15360\n") == -15360
    assert parse_value("[none] scan-time\n") == "none"
    assert parse_value("none [scan-time]\n") == "scan-time"
    assert parse_value("something\n") == "something"


def test_knobs_are_the_writable_files(fake_sysfs: KsmSysfs) -> None:
    knobs = fake_sysfs.knobs()
    assert knobs["advisor_mode"] == "none"
    assert knobs["run"] == 0 and knobs["max_page_sharing"] == 256
    assert "pages_shared" not in knobs and "full_scans" not in knobs
    counters = fake_sysfs.counters()
    assert counters["pages_shared"] == 0


def test_missing_files_read_as_none(fake_sysfs: KsmSysfs) -> None:
    (fake_sysfs.root / "ksm_zero_pages").unlink()
    assert fake_sysfs.counters()["ksm_zero_pages"] is None
    assert fake_sysfs.read("smart_scan") == 1


def test_save_writes_state_file_and_restore_puts_everything_back(
    fake_sysfs: KsmSysfs, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    before = fake_sysfs.knobs()
    g = KnobGuard(fake_sysfs, state)
    saved = g.save()
    assert saved == before
    doc = json.loads(state.read_text())
    assert doc["knobs"] == before and doc["pid"] == os.getpid()
    for name, value in {
        "run": 1,
        "pages_to_scan": 1_000_000_000,
        "sleep_millisecs": 3600000,
        "use_zero_pages": 1,
        "max_page_sharing": 2,
        "smart_scan": 0,
        "stable_node_chains_prune_millisecs": 0,
        "advisor_max_cpu": 5,
    }.items():
        fake_sysfs.write(name, value)
    assert g.restore() == {}
    assert fake_sysfs.knobs() == before
    assert not state.exists()


def test_restore_order_run_last_and_advisor_before_pages_to_scan(
    fake_sysfs: KsmSysfs, tmp_path: Path
) -> None:
    writes: list[tuple[str, object]] = []

    class Recording(KsmSysfs):
        def write(self, name: str, value: object) -> None:  # type: ignore[override]
            writes.append((name, value))
            super().write(name, value)  # type: ignore[arg-type]

    sysfs = Recording(fake_sysfs.root)
    saved = sysfs.knobs()
    sysfs.write("advisor_mode", "scan-time")
    sysfs.write("pages_to_scan", 500)
    sysfs.write("run", 1)
    writes.clear()
    assert restore_knobs(sysfs, saved) == {}
    names = [n for n, _ in writes]
    assert writes[0] == ("run", 2), "cleanup: unmerge everything first"
    assert names.index("advisor_mode") < names.index("pages_to_scan")
    assert writes[-1] == ("run", 0), "run is restored last"


def test_restore_without_cleanup_only_stops_ksmd(fake_sysfs: KsmSysfs) -> None:
    saved = fake_sysfs.knobs()
    fake_sysfs.write("run", 1)
    fake_sysfs.write("use_zero_pages", 1)
    assert restore_knobs(fake_sysfs, saved, cleanup=False) == {}
    assert fake_sysfs.knobs() == saved


def test_ebusy_is_retried_after_run_2(fake_sysfs: KsmSysfs) -> None:
    """max_page_sharing gives EBUSY while pages are shared; run=2 unshares them."""

    class Busy(KsmSysfs):
        shared = True

        def write(self, name: str, value: object) -> None:  # type: ignore[override]
            if name == "run" and str(value) == "2":
                self.shared = False
            if name == "max_page_sharing" and self.shared:
                raise OSError(errno.EBUSY, "busy")
            super().write(name, value)  # type: ignore[arg-type]

    sysfs = Busy(fake_sysfs.root)
    saved = sysfs.knobs()
    super(Busy, sysfs).write("max_page_sharing", 2)
    assert restore_knobs(sysfs, saved, cleanup=False) == {}
    assert sysfs.read("max_page_sharing") == 256
    assert sysfs.read("run") == 0


def test_restore_reports_what_it_cannot_put_back(fake_sysfs: KsmSysfs) -> None:
    class Stubborn(KsmSysfs):
        def write(self, name: str, value: object) -> None:  # type: ignore[override]
            if name == "smart_scan":
                raise OSError(errno.EINVAL, "no")
            super().write(name, value)  # type: ignore[arg-type]

    sysfs = Stubborn(fake_sysfs.root)
    saved = sysfs.knobs()
    KsmSysfs.write(sysfs, "smart_scan", 0)
    problems = restore_knobs(sysfs, saved)
    assert list(problems) == ["smart_scan"] and "EINVAL" in problems["smart_scan"]


def test_restore_from_state_file_after_a_kill(fake_sysfs: KsmSysfs, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    before = fake_sysfs.knobs()
    g = KnobGuard(fake_sysfs, state)
    g.save()
    g.set_workers([{"pid": 12345, "start": 99}])
    fake_sysfs.write("run", 1)
    fake_sysfs.write("pages_to_scan", 1_000_000_000)
    del g  # "SIGKILL": nothing restored
    killed: list[list[dict[str, int]]] = []
    found, problems = restore_from_state_file(state, kill=killed.append)
    assert found and problems == {}
    assert killed == [[{"pid": 12345, "start": 99}]]
    assert fake_sysfs.knobs() == before
    assert not state.exists()
    assert restore_from_state_file(state) == (False, {})


def test_corrupt_state_file_is_reported(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    found, problems = restore_from_state_file(state)
    assert found and problems


def _hold(path: str, seconds: float) -> None:
    with host_lock(Path(path)):
        time.sleep(seconds)


def test_host_lock_waits_for_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "k.lock"
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_hold, args=(str(lock), 0.6))
    p.start()
    try:
        deadline = time.monotonic() + 5
        while not lock.exists() or not lock.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        said: list[str] = []
        with pytest.raises(LockTimeout):
            with host_lock(lock, timeout=0.1, on_wait=said.append):
                pass
        assert said and "waiting for another kernel replay" in said[0]
        t0 = time.monotonic()
        with host_lock(lock, timeout=10):
            waited = time.monotonic() - t0
        assert waited > 0.1
    finally:
        p.join(5)


def test_refusals(fake_sysfs: KsmSysfs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard.os, "geteuid", lambda: 1000)
    with pytest.raises(Refusal, match="root"):
        check_privileges(fake_sysfs)
    monkeypatch.setattr(guard.os, "geteuid", lambda: 0)
    with pytest.raises(Refusal, match="does not exist"):
        check_privileges(KsmSysfs(tmp_path / "nothing"))
    monkeypatch.setattr(KsmSysfs, "is_writable", lambda self: False)
    with pytest.raises(Refusal, match="read-only"):
        check_privileges(fake_sysfs)
