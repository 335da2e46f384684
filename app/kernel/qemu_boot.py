"""One boot of the qemu guest: start qemu, read frames from the second serial port, stop it.

qemu runs in its own process group and is killed (SIGKILL to the group) on every way out:
normal end, timeout, an exception, SIGTERM/SIGHUP of the caller; and if the caller dies
anyway (SIGKILL), by the kernel (``PR_SET_PDEATHSIG``; tied to the calling thread, so call
from a thread that outlives the call). The guest's RAM is not
MADV_MERGEABLE on the host (``-machine pc,mem-merge=off``): the host's KSM gets no new user
while a guest runs (checked: :attr:`Boot.host_mergeable_kb` from qemu's ``smaps``).

Frames (written by :mod:`app.kernel.guest_runner`)::

    KSMLAB-FRAME <kind> <index> <length> <sha256>
    <base64 of zlib(JSON)>
    KSMLAB-END <index>
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MEMORY_MB = 512
CPUS = 2
APPEND = "console=ttyS0 quiet panic=-1"
_PR_SET_PDEATHSIG = 1
_TMP_PREFIX = "ksmlab-qemu-"
_PANIC = b"Kernel panic - not syncing"
_FRAME = re.compile(
    r"KSMLAB-FRAME (\w+) (-?\d+) (\d+) ([0-9a-f]{64})\r?\n([A-Za-z0-9+/=\r\n]*?)KSMLAB-END \2\r?\n"
)


@dataclass
class Frame:
    kind: str
    index: int
    payload: Any


@dataclass
class Boot:
    """What one boot produced."""

    frames: list[Frame] = field(default_factory=list)
    console: str = ""
    returncode: int | None = None
    timed_out: bool = False
    seconds: float = 0.0
    first_frame_seconds: float | None = None
    host_mergeable_kb: int | None = None
    command: list[str] = field(default_factory=list)
    panicked: float | None = None  # seconds after start when the console showed a panic

    def get(self, kind: str) -> list[Frame]:
        return [f for f in self.frames if f.kind == kind]


def parse_frames(text: str) -> list[Frame]:
    """Every complete frame whose length and digest check; damaged frames are dropped."""
    return _scan_frames(text)[0]


def _scan_frames(text: str) -> tuple[list[Frame], int]:
    """The good frames in ``text`` and the offset just past the last complete one."""
    frames = []
    end = 0
    for m in _FRAME.finditer(text):
        end = m.end()
        try:
            raw = base64.b64decode(re.sub(r"\s+", "", m.group(5)), validate=True)
        except binascii.Error:
            continue
        if len(raw) != int(m.group(3)) or hashlib.sha256(raw).hexdigest() != m.group(4):
            continue
        try:
            payload = json.loads(zlib.decompress(raw))
        except (zlib.error, ValueError):
            continue
        frames.append(Frame(m.group(1), int(m.group(2)), payload))
    return frames, end


def qemu_command(qemu: str, vmlinuz: Path, initrd: Path, payload: Path) -> list[str]:
    return [
        qemu,
        "-machine",
        "pc,mem-merge=off",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-m",
        str(MEMORY_MB),
        "-smp",
        str(CPUS),
        "-nographic",
        "-nodefaults",
        "-no-reboot",
        "-serial",
        "stdio",
        "-serial",
        f"file:{payload}",
        "-kernel",
        str(vmlinuz),
        "-initrd",
        str(initrd),
        "-append",
        APPEND,
    ]


def _mergeable_kb(pid: int) -> int | None:
    """Size of qemu's VMAs flagged ``mg`` (MADV_MERGEABLE) in its smaps, in kB."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return None
    total = size = 0
    for line in text.splitlines():
        if line.startswith("Size:"):
            size = int(line.split()[1])
        elif line.startswith("VmFlags:") and " mg" in f" {line[8:]}":
            total += size
    return total


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """qemu gets SIGKILL if the process that started it dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class _Terminated(Exception):
    pass


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM/SIGHUP become an exception while qemu runs, so that ``finally`` kills it
    (only in the main thread, and only where no handler of the caller is installed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise _Terminated(f"signal {signum}")

    saved = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            saved[sig] = signal.signal(sig, handler)
    try:
        yield
    except _Terminated:
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def _remove_stale_dirs() -> None:
    """Remove the temporary folders of boots whose owner died without cleaning up."""
    for d in Path(tempfile.gettempdir()).glob(f"{_TMP_PREFIX}*"):
        try:
            os.kill(int(Path(d, "owner").read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            continue


def kill_group(proc: subprocess.Popen[bytes], timeout: float | None = None) -> None:
    """SIGKILL a child started in its own process group, and reap it (waiting at most
    ``timeout`` seconds when given)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def boot(
    qemu: str,
    vmlinuz: Path,
    initrd_parts: list[bytes],
    boot_timeout: float,
    frame_timeout: float,
    on_frame: Callable[[Frame], None] | None = None,
    expected: int | None = None,
) -> Boot:
    """Boot once; return the frames read. ``on_frame`` sees each frame as it arrives.

    The guest is stopped (``timed_out``) when its first frame does not come within
    ``boot_timeout`` seconds, or any later frame within ``frame_timeout`` of the previous.

    After the ``done`` frame qemu gets a few seconds to power off, then is killed.
    ``expected`` (number of result frames) only serves the early end: with all results in,
    a guest that hangs on power-off does not hold the caller.
    """
    result = Boot()
    _remove_stale_dirs()
    with tempfile.TemporaryDirectory(prefix=_TMP_PREFIX) as tmp:
        Path(tmp, "owner").write_text(str(os.getpid()))
        initrd, payload, console = Path(tmp, "initrd"), Path(tmp, "ttyS1"), Path(tmp, "ttyS0")
        with initrd.open("wb") as f:
            for part in initrd_parts:
                f.write(part)
        payload.touch()
        result.command = qemu_command(qemu, vmlinuz, initrd, payload)
        t0 = time.monotonic()
        with console.open("wb") as out:
            proc = subprocess.Popen(
                result.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            with _signals_raise():
                _watch(
                    proc,
                    (payload, console),
                    result,
                    t0,
                    (boot_timeout, frame_timeout),
                    on_frame,
                    expected,
                )
        finally:
            kill_group(proc)
            result.seconds = round(time.monotonic() - t0, 3)
            result.returncode = proc.returncode
            result.frames = parse_frames(payload.read_text(encoding="latin-1"))
            result.console = console.read_text(errors="replace")
    return result


def _watch(
    proc: subprocess.Popen[bytes],
    files: tuple[Path, Path],
    result: Boot,
    t0: float,
    timeouts: tuple[float, float],
    on_frame: Callable[[Frame], None] | None,
    expected: int | None,
) -> None:
    payload, console = files
    offset = 0
    done_at: float | None = None
    deadline = t0 + timeouts[0]
    while True:
        now = time.monotonic()
        ended = proc.poll() is not None
        if result.panicked is None and _PANIC in console.read_bytes():
            result.panicked = now - t0
            deadline = min(deadline, now + 3)  # panic=-1 reboots (qemu exits); if it hangs
        with payload.open("rb") as f:
            f.seek(offset)
            frames, end = _scan_frames(f.read().decode("latin-1"))
        offset += end
        if frames:
            deadline = now + timeouts[1]
        for frame in frames:
            if result.first_frame_seconds is None:
                result.first_frame_seconds = round(now - t0, 3)
                result.host_mergeable_kb = _mergeable_kb(proc.pid)
            if on_frame:
                on_frame(frame)
            if frame.kind == "done" or (
                expected is not None and frame.kind == "result" and frame.index == expected - 1
            ):
                done_at = done_at or now
        if ended:
            return
        if done_at is not None and now - done_at > 5:
            return  # all in; do not wait for a slow power-off
        if now > deadline:
            result.timed_out = result.panicked is None
            return
        time.sleep(0.05)
