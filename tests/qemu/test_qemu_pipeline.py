"""The qemu pipeline itself, with a stand-in replayer: boot, frames, failures, cleanup."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from app.kernel import qemu

pytestmark = pytest.mark.qemu_guest
FAKE = Path(__file__).with_name("guest_fake_replayer.py").read_bytes()


def _scenario(name: str) -> dict[str, Any]:
    return {"format": "ksm-scenario/1", "name": name, "steps": []}


@pytest.mark.parametrize(
    "version,release,has_smart_scan",
    [
        ("6.1", "6.1.0-57-cloud-amd64", False),
        ("6.12", "6.12.117+deb12-cloud-amd64", True),
    ],
)
def test_probe_boots_the_debian_kernel(version: str, release: str, has_smart_scan: bool) -> None:
    t0 = time.monotonic()
    info = qemu.probe_guest(version)
    assert time.monotonic() - t0 < 60
    assert info["hello"]["release"] == release
    assert info["hello"]["nproc"] == 2
    assert ("smart_scan" in info["ksm"]) is has_smart_scan
    assert info["ksm"]["run"] == "0"
    guest = info["guest"]
    assert guest["kernel_package"].startswith(f"linux-image-{release.split('-cloud')[0]}")
    assert "pc,mem-merge=off" in guest["qemu_command"]
    assert guest["host_mergeable_kb"] == 0  # the guest's RAM is no host KSM user


def test_results_failures_and_a_dying_guest() -> None:
    names = ["ok", "ok", "unsupported", "hang", "raise", "panic", "ok"]
    seen: list[int] = []
    results = qemu.replay_many_in_guest(
        [_scenario(n) for n in names],
        "6.1",
        timeout=6,
        replayer="guest_fake_replayer",
        extra_files={"guest_fake_replayer.py": FAKE},
        on_result=lambda i, r: seen.append(i),
    )
    assert [r.status for r in results] == [0, 0, 4, 124, 3, 1, 0]
    assert sorted(seen) == list(range(7))
    assert "RuntimeError: boom" in results[4].stderr
    assert results[0].trace is not None and results[1].trace is not None
    assert results[0].trace["meta"]["pid"] != results[1].trace["meta"]["pid"]
    ok = results[0].trace
    assert ok["meta"]["euid"] == 0
    assert ok["source"] == "kernel 6.1.0-57-cloud-amd64"
    assert ok["meta"]["guest"]["kernel_package_version"]
    assert "unsupported on this kernel" in results[2].stderr
    assert "timed out" in results[3].stderr
    # the guest panics twice on it (tried once more), then the last one runs in a third boot
    assert results[5].trace is None and "guest kernel panicked" in results[5].stderr
    assert results[6].trace is not None


def test_without_fork_each_replay_is_a_fresh_interpreter() -> None:
    names = ["ok", "ok", "unsupported", "raise"]
    results = qemu.replay_many_in_guest(
        [_scenario(n) for n in names],
        "6.12",
        timeout=60,
        replayer="guest_fake_replayer",
        extra_files={"guest_fake_replayer.py": FAKE},
        fork=False,
    )
    assert [r.status for r in results] == [0, 0, 4, 1]
    assert "RuntimeError: boom" in results[3].stderr
    assert results[0].trace is not None and results[1].trace is not None
    assert results[0].trace["source"] == "kernel 6.12.117+deb12-cloud-amd64"


def test_replay_in_guest_exit_statuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert qemu.replay_in_guest(bad, "6.1", tmp_path / "t.json") == 2
    assert "invalid JSON" in capsys.readouterr().err
    assert qemu.replay_in_guest(bad, "5.4", tmp_path / "t.json") == 2
    assert "no qemu kernel for '5.4'" in capsys.readouterr().err


_HANG = """
import sys
from pathlib import Path
from app.kernel import qemu
fake = Path(sys.argv[1]).read_bytes()
qemu.replay_many_in_guest([{"name": "hang"}], "6.1", timeout=600,
                          replayer="guest_fake_replayer",
                          extra_files={"guest_fake_replayer.py": fake})
"""


def _qemu_pids(tmpdir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(tmpdir).encode() in cmdline and b"qemu-system" in cmdline:
                pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_qemu_dies_with_its_caller(sig: signal.Signals) -> None:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    caller = subprocess.Popen(
        [sys.executable, "-c", _HANG, str(Path(__file__).with_name("guest_fake_replayer.py"))],
        env=env,
        cwd=root,
    )
    try:
        deadline = time.monotonic() + 60
        tmpdir = None
        while tmpdir is None and time.monotonic() < deadline:
            for d in Path(tempfile.gettempdir()).glob("ksmlab-qemu-*"):
                with contextlib.suppress(OSError, ValueError):
                    if int((d / "owner").read_text()) == caller.pid and _qemu_pids(d):
                        tmpdir = d
            time.sleep(0.2)
        assert tmpdir is not None, "qemu did not start"
        time.sleep(2)
        caller.send_signal(sig)
        caller.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _qemu_pids(tmpdir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _qemu_pids(tmpdir) == []
        if sig == signal.SIGTERM:
            assert not tmpdir.exists()
    finally:
        caller.kill()
        caller.wait()


def test_a_failing_guest_runner_is_one_error() -> None:
    kernel, result = qemu._boot_job("6.1", {"job.json": b"{not json"}, 1)
    assert result.get("hello") and result.seconds < 60
    with pytest.raises(qemu.QemuError, match="the guest runner failed: .*JSONDecodeError"):
        qemu._raise_runner_error(result, "6.1")
