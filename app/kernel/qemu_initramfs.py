"""Initramfs images for the qemu guest (uncompressed ``newc`` cpio, written here in Python).

The guest boots from two archives concatenated in one file (the kernel unpacks them in order):

* the *base* archive, cached by content key: busybox-static and its applet links, the host's
  Debian ``/usr/bin/python3.11`` with the shared libraries ``ldd`` names, the stdlib (source
  and the ``__pycache__`` byte code Debian compiled at install) minus what a replay never
  needs, a set of ``lib-dynload`` extension modules with their libraries, and ``/init``;
* the small *job* archive, built per boot: the project's ``sim/`` and ``app/kernel/``
  packages (and ``app/__init__.py``) under ``/ksmlab`` and the job (scenarios) under
  ``/ksmlab/job``.

Uncompressed on purpose: inflating is slow under TCG, copying is not.
"""

from __future__ import annotations

import hashlib
import os
import py_compile
import re
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PYTHON = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
BUSYBOX = Path("/bin/busybox")

# Parts of the stdlib a replay never imports (and the static libpython, 25 MB).
_STDLIB_SKIP = {
    "config-3.11-x86_64-linux-gnu",
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "distutils",
    "site-packages",
    "dist-packages",
    "venv",
    "sqlite3",
    "curses",
    "dbm",
    "lib-dynload",
    "xmlrpc",
    "wsgiref",
    "__phello__",
    "turtle.py",
    "pydoc.py",
    "antigravity.py",
    "this.py",
}
# Extension modules shipped (the rest of the interpreter's modules are built in on Debian).
_DYNLOAD = (
    "_ctypes",
    "_json",
    "mmap",
    "termios",
    "resource",
    "_contextvars",
    "_queue",
    "_typing",
    "_multiprocessing",
    "_posixshmem",
    "_uuid",
    "_decimal",
    "_bz2",
    "_lzma",
    "_zoneinfo",
    "_asyncio",
    "_multibytecodec",
    "_lsprof",
)
PROJECT_DIRS = ("sim", "app/kernel")
PROJECT_FILES = ("app/__init__.py",)

INIT_SCRIPT = """#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /tmp /run /var/tmp /root
cd /ksmlab
PYTHONDONTWRITEBYTECODE=1 PYTHONUTF8=1 PYTHONHASHSEED=0 PYTHONPATH=/ksmlab \\
  /usr/bin/python3.11 -S -m app.kernel.guest_runner /ksmlab/job
echo "ksmlab-guest: runner exited with status $?"
sync
poweroff -f
"""


class InitramfsError(Exception):
    """A piece the guest image needs is missing on the host (the message says which)."""


@dataclass
class _Entry:
    name: str  # path inside the archive, no leading slash
    mode: int
    data: bytes = b""
    mtime: int = 0


@dataclass
class CpioWriter:
    """Writes a ``newc`` archive; parent directories are added as needed."""

    entries: list[_Entry] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def _dirs(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self._names:
                self._names.add(d)
                self.entries.append(_Entry(d, stat.S_IFDIR | 0o755))

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        name = name.strip("/")
        self._dirs(name + "/x")

    def add_file(self, name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        name = name.strip("/")
        if name in self._names:
            return
        self._dirs(name)
        self._names.add(name)
        self.entries.append(_Entry(name, stat.S_IFREG | mode, data, mtime))

    def add_symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        if name in self._names:
            return
        self._dirs(name)
        self._names.add(name)
        self.entries.append(_Entry(name, stat.S_IFLNK | 0o777, target.encode()))

    def add_host_file(self, host: Path, name: str | None = None) -> None:
        """Copy a host file (following symlinks), keeping its mode bits and mtime."""
        st = host.stat()
        self.add_file(name or str(host), host.read_bytes(), st.st_mode & 0o777, int(st.st_mtime))

    def to_bytes(self) -> bytes:
        out = bytearray()
        for ino, e in enumerate([*self.entries, _Entry("TRAILER!!!", 0)], start=1):
            name = e.name.encode() + b"\0"
            nlink = 2 if stat.S_ISDIR(e.mode) else 1
            fields = (ino, e.mode, 0, 0, nlink, e.mtime, len(e.data), 0, 0, 0, 0, len(name), 0)
            out += b"070701" + b"".join(b"%08X" % v for v in fields) + name
            out += b"\0" * (-len(out) % 4)
            out += e.data
            out += b"\0" * (-len(out) % 4)
        out += b"\0" * (-len(out) % 512)
        return bytes(out)


def _ldd(path: Path) -> list[Path]:
    """The shared libraries ``path`` loads (ldd's resolved paths plus the loader)."""
    try:
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise InitramfsError("ldd not found: apt-get install libc-bin") from None
    libs = []
    for line in out.stdout.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def _stdlib_files() -> Iterator[Path]:
    for top in sorted(STDLIB.iterdir()):
        if top.name in _STDLIB_SKIP:
            continue
        if top.is_file():
            if top.suffix == ".py":
                yield top
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d not in ("test", "tests", "idle_test"))
            for f in sorted(filenames):
                if f.endswith(".py") or (f.endswith(".pyc") and ".opt-" not in f):
                    yield Path(dirpath, f)


def _base_sources() -> list[Path]:
    """Every host file the base archive copies (for the cache key and for building)."""
    for piece, package in ((PYTHON, "python3.11"), (BUSYBOX, "busybox-static")):
        if not piece.exists():
            raise InitramfsError(f"{piece} not found: apt-get install {package}")
    files = [PYTHON, BUSYBOX]
    exts = []
    for name in _DYNLOAD:
        exts += sorted((STDLIB / "lib-dynload").glob(f"{name}.cpython-311-*.so"))
    files += exts
    libs: dict[str, Path] = {}
    for binary in [PYTHON, *exts]:
        for lib in _ldd(binary):
            libs.setdefault(str(lib), lib)
    files += [libs[k] for k in sorted(libs)]
    files += list(_stdlib_files())
    return files


def base_key() -> str:
    """A key that changes when any host file of the base archive (or this builder) does."""
    h = hashlib.sha256(INIT_SCRIPT.encode())
    h.update(Path(__file__).read_bytes())
    for path in _base_sources():
        st = path.stat()
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def build_base() -> bytes:
    """The base archive: busybox, python3.11 with its libraries and stdlib, ``/init``."""
    w = CpioWriter()
    for d in (
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "var/tmp",
        "sbin",
        "usr/sbin",
        "usr/bin",
        "ksmlab",
    ):
        w.add_dir(d)
    w.add_host_file(BUSYBOX, "bin/busybox")
    listing = subprocess.run(
        [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=False
    ).stdout.split()
    for applet in listing:
        if applet not in ("bin/busybox", "linuxrc"):
            depth = applet.count("/")
            w.add_symlink(applet, "../" * depth + "bin/busybox")
    w.add_file("init", INIT_SCRIPT.encode(), 0o755)
    w.add_symlink("usr/bin/python3", "python3.11")
    for path in _base_sources():
        if path == BUSYBOX:
            continue
        w.add_host_file(path)
        real = path.resolve()
        if real != path:  # ldd may name a symlinked path; keep both names valid
            w.add_host_file(real)
    return w.to_bytes()


def _project_files(root: Path) -> Iterable[tuple[Path, str]]:
    for d in PROJECT_DIRS:
        base = root / d
        if not base.is_dir():
            raise InitramfsError(f"{base} not found: the project tree is incomplete")
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(n for n in dirnames if n != "__pycache__")
            for f in sorted(filenames):
                if f.endswith(".py"):
                    p = Path(dirpath, f)
                    yield p, str(p.relative_to(root))
    for f in PROJECT_FILES:
        yield root / f, f


def _byte_code(host: Path, rel: str, tmp: Path) -> bytes | None:
    """``rel``'s byte code for the guest's python3.11 (unchecked-hash pyc: valid whatever the
    file times), or None when this interpreter is not a 3.11 (the guest then compiles)."""
    if sys.version_info[:2] != (3, 11):
        return None
    out = tmp / "x.pyc"
    try:
        py_compile.compile(
            str(host),
            cfile=str(out),
            dfile=f"/ksmlab/{rel}",
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
    except py_compile.PyCompileError:
        return None
    return out.read_bytes()


def build_job(root: Path, job_files: dict[str, bytes]) -> bytes:
    """The per-boot archive: the project's packages under /ksmlab (with byte code: compiling
    them in the guest would cost seconds per replayer start under TCG), the job under
    /ksmlab/job."""
    w = CpioWriter()
    with tempfile.TemporaryDirectory(prefix="ksmlab-pyc-") as tmp:
        for host, rel in _project_files(root):
            w.add_file(f"ksmlab/{rel}", host.read_bytes())
            code = _byte_code(host, rel, Path(tmp))
            if code is not None:
                pyc = Path(rel).parent / "__pycache__" / f"{Path(rel).stem}.cpython-311.pyc"
                w.add_file(f"ksmlab/{pyc}", code)
    for name, data in job_files.items():
        w.add_file(f"ksmlab/job/{name}", data)
    return w.to_bytes()
