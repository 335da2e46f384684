"""Long-running qemu guests: the classic KSM host, several VMs booted on the same kernel.

:class:`Guests` boots ``n`` guests on one of Debian's kernels the replayer uses
(:mod:`app.kernel.qemu_packages`), each with ``memory_mb`` of RAM, and lets them idle until
:meth:`Guests.stop`. Unlike the replayer's guests (``mem-merge=off``) their RAM is left
``MADV_MERGEABLE`` on the host, qemu's default: what KSM on a VM host merges. The image is
the replayer's base initramfs (busybox, python) with ``/init`` replaced by one that mounts
the usual file systems, loads Python once (as a guest's services would), prints
``KSMLAB-IDLE`` on the console and sleeps. The guests start one after the other, each once
the previous one's RAM is mergeable: KSM scans its users in the order they joined it
(``ksm_enter`` at qemu's ``madvise``), and guests started together joined in a racy order
(measured: the second guest's pid scanned first in three trials of three), while a capture
lists them, and the simulation scans them, in start order.

Safety: every qemu runs in its own process group with ``PR_SET_PDEATHSIG`` (SIGKILL if this
process dies); :meth:`stop` kills every group this object started (by pid, never by name)
and is called by the context manager's exit whatever happens. Boot uses software
emulation (TCG: KVM cannot run these kernels here, ``docs/qemu.md``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from .host.procfs import ProcFs
from .qemu import base_image
from .qemu_boot import _die_with_parent, kill_group
from .qemu_initramfs import CpioWriter
from .qemu_packages import ensure_kernel, find_qemu

READY = b"KSMLAB-IDLE"
BOOT_TIMEOUT_S = 180.0
MERGEABLE_TIMEOUT_S = 60.0

IDLE_INIT = """#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /run
/usr/bin/python3.11 -S -c 'import json, zlib, base64, hashlib' 2>/dev/null
echo KSMLAB-IDLE
while :; do sleep 3600; done
"""


def idle_image() -> bytes:
    """A small archive, unpacked after the base one, whose ``/init`` idles."""
    w = CpioWriter()
    w.add_file("init", IDLE_INIT.encode(), 0o755)
    return w.to_bytes()


def _wait_mergeable(proc: subprocess.Popen[bytes], console: Path) -> None:
    """Wait until qemu ``proc`` has a VM_MERGEABLE mapping (its guest RAM, marked by qemu's
    ``madvise(MADV_MERGEABLE)`` at start-up, which makes it a KSM user)."""
    procfs = ProcFs()
    deadline = time.monotonic() + MERGEABLE_TIMEOUT_S
    while True:
        if procfs.has_mergeable_vma(proc.pid):
            return
        if proc.poll() is not None:
            tail = console.read_text(errors="replace")[-400:]
            raise RuntimeError(f"qemu {proc.pid} exited while starting: {tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"qemu {proc.pid} marked no memory mergeable in time")
        time.sleep(0.01)


@dataclass
class Guests:
    """``n`` idle guests of ``memory_mb`` MiB on Debian's kernel ``version``."""

    n: int = 3
    version: str = "6.12"
    memory_mb: int = 256
    cpus: int = 1
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    tmp: Path | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def command(self, qemu: str, vmlinuz: Path, initrd: Path) -> list[str]:
        return [
            qemu,
            "-machine",
            "pc",  # mem-merge=on, qemu's default: guest RAM is MADV_MERGEABLE
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-m",
            str(self.memory_mb),
            "-smp",
            str(self.cpus),
            "-nographic",
            "-nodefaults",
            "-no-reboot",
            "-serial",
            "stdio",
            "-kernel",
            str(vmlinuz),
            "-initrd",
            str(initrd),
            "-append",
            "console=ttyS0 quiet panic=-1",
        ]

    def start(self) -> list[int]:
        """Boot every guest and wait until each idles; on any failure kill them all."""
        try:
            qemu = find_qemu()
            kernel = ensure_kernel(self.version)
            self.tmp = Path(tempfile.mkdtemp(prefix="ksmlab-guests-"))
            initrd = self.tmp / "initrd"
            initrd.write_bytes(base_image() + idle_image())
            consoles = []
            for i in range(self.n):
                console = self.tmp / f"console{i}"
                consoles.append(console)
                with console.open("wb") as out:
                    self.procs.append(
                        subprocess.Popen(
                            self.command(qemu, kernel.vmlinuz, initrd),
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                            preexec_fn=_die_with_parent,
                        )
                    )
                # the next guest starts once this one's RAM is mergeable: KSM scans its
                # users in the order they joined (ksm_enter), which is then pid order
                _wait_mergeable(self.procs[i], consoles[i])
            deadline = time.monotonic() + BOOT_TIMEOUT_S
            waiting = set(range(self.n))
            while waiting:
                for i in list(waiting):
                    if READY in consoles[i].read_bytes():
                        waiting.discard(i)
                    elif self.procs[i].poll() is not None:
                        tail = consoles[i].read_text(errors="replace")[-400:]
                        raise RuntimeError(f"guest {i} exited while booting: {tail}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"guests {sorted(waiting)} did not boot in time")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self.pids

    def stop(self) -> None:
        """Kill every guest this object started (its process group) and reap it."""
        for p in self.procs:
            kill_group(p, timeout=15)
        self.procs.clear()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> Guests:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
