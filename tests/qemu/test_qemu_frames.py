"""Parts of the qemu pipeline that need no guest: frames, the cpio writer, the cache."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from app.kernel import qemu_initramfs, qemu_packages
from app.kernel.qemu_boot import parse_frames


def _frame(kind: str, index: int, payload: object) -> str:
    raw = zlib.compress(json.dumps(payload).encode())
    head = f"KSMLAB-FRAME {kind} {index} {len(raw)} {hashlib.sha256(raw).hexdigest()}\n"
    return head + base64.encodebytes(raw).decode() + f"KSMLAB-END {index}\n"


def test_frames_are_checked_and_damaged_ones_dropped() -> None:
    good = _frame("result", 0, {"status": 0, "trace": {"x": 1}})
    damaged = _frame("result", 1, {"status": 0}).replace("KSMLAB-END 1", "").replace("e", "f", 1)
    wrong_digest = _frame("result", 2, {"s": 2}).replace(" ", " ", 1)
    wrong_digest = wrong_digest.replace(wrong_digest.split()[4], "0" * 64)
    text = "noise\r\n" + good.replace("\n", "\r\n") + damaged + wrong_digest + _frame("done", 1, {})
    frames = parse_frames(text)
    assert [(f.kind, f.index) for f in frames] == [("result", 0), ("done", 1)]
    assert frames[0].payload["trace"] == {"x": 1}


def test_cpio_writer_output_lists_with_cpio(tmp_path: Path) -> None:
    w = qemu_initramfs.CpioWriter()
    w.add_file("a/b/c.txt", b"hello", 0o600, 1_700_000_000)
    w.add_symlink("bin/sh", "busybox")
    w.add_dir("empty")
    data = w.to_bytes()
    assert len(data) % 512 == 0
    if not shutil.which("cpio"):
        pytest.skip("cpio not installed")
    out = subprocess.run(["cpio", "-it", "--quiet"], input=data, capture_output=True, check=True)
    assert out.stdout.decode().split() == ["a", "a/b", "a/b/c.txt", "bin", "bin/sh", "empty"]
    subprocess.run(["cpio", "-idm", "--quiet"], input=data, cwd=tmp_path, check=True)
    assert (tmp_path / "a/b/c.txt").read_bytes() == b"hello"
    assert os.readlink(tmp_path / "bin/sh") == "busybox"


def test_job_archive_holds_the_project_packages() -> None:
    data = qemu_initramfs.build_job(Path(__file__).resolve().parents[2], {"job.json": b"{}"})
    names = set()
    buf = io.BytesIO(data)
    while True:
        head = buf.read(110)
        namesize, filesize = int(head[94:102], 16), int(head[54:62], 16)
        name = buf.read(namesize)[:-1].decode()
        buf.read(-(110 + namesize) % 4)
        buf.read(filesize + (-filesize % 4))
        if name == "TRAILER!!!":
            break
        names.add(name)
    assert {
        "ksmlab/app/__init__.py",
        "ksmlab/sim/scenario.py",
        "ksmlab/sim/trace.py",
        "ksmlab/app/kernel/guest_runner.py",
        "ksmlab/job/job.json",
    } <= names


def test_unknown_kernel_version_is_one_line() -> None:
    with pytest.raises(qemu_packages.MissingPiece, match="no qemu kernel for '4.19'"):
        qemu_packages.check_version("4.19")


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KSMLAB_CACHE", str(tmp_path))
    assert qemu_packages.cache_dir() == tmp_path
    monkeypatch.delenv("KSMLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert qemu_packages.cache_dir() == tmp_path / "x" / "ksmlab"


def test_missing_qemu_is_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.kernel import qemu

    monkeypatch.setenv("PATH", str(tmp_path))
    scenario = tmp_path / "s.json"
    scenario.write_text(json.dumps({"format": "ksm-scenario/1", "name": "s", "steps": []}))
    assert qemu.replay_in_guest(scenario, "6.1", tmp_path / "t.json") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "qemu-system-x86_64 not found: apt-get install qemu-system-x86" in err
    assert not (tmp_path / "t.json").exists()


def test_uncached_kernel_without_apt_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KSMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(qemu_packages.MissingPiece, match="not cached in .* and no apt-get"):
        qemu_packages.ensure_kernel("6.12")
    with pytest.raises(qemu_packages.MissingPiece, match="qemu-setup.sh"):
        qemu_packages.ensure_kernel("6.12", fetch=False)


def test_missing_busybox_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(qemu_initramfs, "BUSYBOX", tmp_path / "busybox")
    with pytest.raises(qemu_initramfs.InitramfsError, match="apt-get install busybox-static"):
        qemu_initramfs.base_key()


def test_damaged_kernel_deb_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb not installed")
    monkeypatch.setenv("KSMLAB_CACHE", str(tmp_path))
    package, version = qemu_packages.KERNEL_PACKAGES["6.1"]
    (tmp_path / "debs").mkdir()
    (tmp_path / "debs" / f"{package}_{version}_amd64.deb").write_bytes(b"!<arch>\nbroken")
    with pytest.raises(qemu_packages.MissingPiece, match="is damaged"):
        qemu_packages.ensure_kernel("6.1", fetch=False)


def test_dying_boots_are_retried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """replay_many_in_guest's bookkeeping, with scripted boots instead of qemu: a boot that
    dies before the runner starts is retried; a scenario during which the guest dies is tried
    once more, then fails alone; the others go on."""
    from app.kernel import qemu
    from app.kernel.qemu_boot import Boot, Frame

    monkeypatch.setenv("KSMLAB_CACHE", str(tmp_path))
    # per boot: the scenario indexes (relative to the batch) that get a result before it dies
    script = [None, [0], [], [0]]  # None: no hello at all
    calls: list[list[str]] = []

    def fake_boot(version: str, job: dict[str, bytes], count: int, on_frame, timeout):
        spec = json.loads(job["job.json"])
        calls.append(spec["scenarios"])
        plan = script[len(calls) - 1]
        boot = Boot(console=f"boot {len(calls)}: Kernel panic")
        if plan is not None:
            on_frame(Frame("hello", -1, {"release": "fake"}))
            for i in plan:
                trace = {"checkpoints": [], "scenario": spec["scenarios"][i]}
                on_frame(Frame("result", i, {"status": 0, "trace": trace, "stderr": ""}))
        kernel = qemu_packages.Kernel(version, "pkg", "1", tmp_path, tmp_path)
        return kernel, boot

    monkeypatch.setattr(qemu, "_boot_job", fake_boot)
    seen: list[int] = []
    results = qemu.replay_many_in_guest(
        [{"name": str(i)} for i in range(3)], "6.1", on_result=lambda i, r: seen.append(i)
    )
    assert calls == [["00000.json", "00001.json", "00002.json"]] * 2 + [
        ["00001.json", "00002.json"],
        ["00002.json"],
    ]
    assert [r.status for r in results] == [0, 1, 0]
    assert results[2].trace is not None and results[2].trace["scenario"] == "00002.json"
    assert "boot 3: Kernel panic" in results[1].stderr
    assert sorted(seen) == [0, 1, 2]
    assert (tmp_path / "logs" / "last-failed-console.txt").read_text() == "boot 3: Kernel panic"

    script[:] = [None] * 3
    calls.clear()
    with pytest.raises(qemu.QemuError, match="guest ended"):
        qemu.replay_many_in_guest([{"name": "x"}], "6.1")
    assert len(calls) == 3
