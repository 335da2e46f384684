"""``/sys/kernel/mm/ksm`` for the replayer: knobs (read and written) and counters.

The counters, the knobs and their defaults come from ``sim.ksm_files`` (the defaults through
``sim.knobs``); values are parsed by :func:`app.kernel.host.ksm.parse_value`, the parser the
live view reads with. The directory is a parameter (``KsmSysfs(root)``) so that everything
here can be tested without root against a temporary directory holding plain files. A *knob*
is a file with a write bit in its mode; a *counter* is read-only. Values are returned as
``int`` when the file holds an integer, otherwise as the selected word of a ``[choice]
other`` list (``advisor_mode``) or the stripped text. A file that does not exist reads as
``None``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from sim.knobs import DEFAULTS, FORMAT_KNOBS
from sim.ksm_files import GLOBAL_COUNTERS

from .host.ksm import Value
from .host.ksm import parse_value as parse_value  # re-exported: KsmSysfs reads with it

DEFAULT_ROOT = "/sys/kernel/mm/ksm"

#: the format's default knobs (scenario-format.md); a scenario's ``sysfs`` overrides them
DEFAULT_KNOBS: dict[str, int] = {k: int(DEFAULTS[k]) for k in FORMAT_KNOBS}

#: global counters of a trace checkpoint, in trace order (the read-only sysfs files)
COUNTERS = GLOBAL_COUNTERS

#: counters that only ever grow (recorded as the increase since the scenario started)
CUMULATIVE = ("full_scans", "pages_scanned", "pages_skipped")

#: knobs that give EBUSY while pages are shared (run=2 first)
BUSY_KNOBS = ("max_page_sharing", "merge_across_nodes")

KnobValue = Value


def errno_name(exc: OSError) -> str:
    """``EBUSY`` for an OSError with errno EBUSY (``EIO`` style names, or the number)."""
    if exc.errno is None:
        return str(exc)
    return errno.errorcode.get(exc.errno, str(exc.errno))


class KsmSysfs:
    """Reads and writes the files of one ``/sys/kernel/mm/ksm``-like directory."""

    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def names(self) -> list[str]:
        """Every file in the directory, sorted."""
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_file())
        except OSError:
            return []

    def knob_names(self) -> list[str]:
        """The writable files (mode has a write bit), sorted."""
        out = []
        for name in self.names():
            try:
                mode = os.stat(self.path(name)).st_mode
            except OSError:
                continue
            if mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
                out.append(name)
        return out

    def read_text(self, name: str) -> str | None:
        try:
            with open(self.path(name), encoding="ascii", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def read(self, name: str) -> KnobValue | None:
        """The parsed value of a file, ``None`` if it does not exist."""
        text = self.read_text(name)
        return None if text is None else parse_value(text)

    def read_int(self, name: str) -> int | None:
        value = self.read(name)
        return value if isinstance(value, int) else None

    def write(self, name: str, value: KnobValue) -> None:
        """Write a knob; raises ``OSError`` with the kernel's errno (EINVAL, EBUSY...)."""
        data = f"{value}".encode("ascii")
        fd = os.open(self.path(name), os.O_WRONLY | os.O_TRUNC)
        try:
            n = os.write(fd, data)
            if n != len(data):
                raise OSError(errno.EIO, f"short write to {name}")
        finally:
            os.close(fd)

    def knobs(self) -> dict[str, KnobValue]:
        """Every writable knob and its value."""
        out: dict[str, KnobValue] = {}
        for name in self.knob_names():
            value = self.read(name)
            if value is not None:
                out[name] = value
        return out

    def counters(self) -> dict[str, int | None]:
        """The trace's global counters (raw kernel values), ``None`` for missing files."""
        return {name: self.read_int(name) for name in COUNTERS}

    def is_writable(self) -> bool:
        """Can knobs be written here (not a read-only mount)? Opens ``run`` for writing."""
        try:
            if os.statvfs(self.root).f_flag & os.ST_RDONLY:
                return False
            fd = os.open(self.path("run"), os.O_WRONLY)
        except OSError:
            return False
        os.close(fd)
        return True
