"""``/proc`` readers: per-process KSM counters, page frames and flags, maps, smaps, KSM users.

The one place that knows ``/proc``'s formats for KSM Lab: the replayer (through
:class:`ProcFs`) and the live view (through :mod:`.ksm` and :mod:`.pagemap`) both read with
it. It holds the host's ``PAGE_SIZE``, the ``KPF_*`` and ``PM_*`` bits, the one smaps parser,
the one (batched) ``/proc/kpageflags`` reader and the one :class:`ProcessGone`.

The ``/proc`` root is a parameter (``ProcFs(root)``) so parsing can be tested against fixture
trees. Missing files and lines read as ``None`` (older kernels lack some of them, see
``ksm-model.md`` §0.1); a process that vanished raises :class:`ProcessGone`. Nothing here
writes.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sim.trace import PROC_FIELDS as TRACE_PROC_FIELDS

#: the host's page size (``sysconf``; pagemap and kpageflags are indexed by it)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

#: ``/proc/kpageflags`` bits (include/uapi/linux/kernel-page-flags.h)
KPF_DIRTY = 4
KPF_ANON = 12
KPF_KSM = 21
KPF_ZERO_PAGE = 24
#: a "kernel hacking" bit (include/linux/kernel-page-flags.h, KPF_MAPPEDTODISK, later
#: KPF_OWNER_2): PG_anon_exclusive on an anonymous page in 6.1-6.12; never stable ABI
KPF_ANON_EXCLUSIVE = 34

PM_PRESENT = 1 << 63
PM_SWAP = 1 << 62
PM_PFN_MASK = (1 << 55) - 1

#: per-process fields of a trace, in trace order
PROC_FIELDS = TRACE_PROC_FIELDS


#: longest run of kpageflags entries read with one pread when PFNs are close together
KPF_GAP = 64


class ProcessGone(Exception):
    """The process no longer exists (or exited while it was being read)."""


@dataclass(frozen=True)
class Vma:
    start: int
    end: int
    perms: str
    name: str


def parse_ksm_stat(text: str) -> dict[str, int | bool]:
    """``ksm_rmap_items 5`` -> 5, ``ksm_mergeable: yes`` -> True (unknown lines kept)."""
    out: dict[str, int | bool] = {}
    for line in text.splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) != 2:
            continue
        name, value = parts
        if value in ("yes", "no"):
            out[name] = value == "yes"
        else:
            try:
                out[name] = int(value)
            except ValueError:
                continue
    return out


def parse_maps(text: str) -> list[Vma]:
    vmas = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, _, hi = parts[0].partition("-")
        vmas.append(Vma(int(lo, 16), int(hi, 16), parts[1], parts[5] if len(parts) > 5 else ""))
    return vmas


@dataclass
class SmapsVma:
    start: int
    end: int
    perms: str = ""
    name: str = ""  # the mapped file or ``[heap]``-like name, "" for anonymous memory
    ksm_kb: int | None = None  # the ``KSM:`` line (6.6+; KSM pages only), None when absent
    mergeable: bool = False  # VmFlags ``mg`` (VM_MERGEABLE)


def parse_smaps(text: str) -> list[SmapsVma]:
    """Per VMA of an smaps file: range, perms, name, ``KSM:`` kB and whether VmFlags has ``mg``.

    A malformed range line ends the VMA being read (its later lines are ignored); a ``KSM:``
    line without a number reads as None.
    """
    out: list[SmapsVma] = []
    current: SmapsVma | None = None
    for line in text.splitlines():
        head = line.split(None, 1)[0] if line.strip() else ""
        if "-" in head and not head.endswith(":"):
            parts = line.split(None, 5)
            lo, _, hi = head.partition("-")
            try:
                current = SmapsVma(
                    int(lo, 16),
                    int(hi, 16),
                    parts[1] if len(parts) > 1 else "",
                    parts[5].strip() if len(parts) > 5 else "",
                )
            except ValueError:
                current = None
                continue
            out.append(current)
        elif current is not None and head == "KSM:":
            fields = line.split()
            current.ksm_kb = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
        elif current is not None and head == "VmFlags:":
            current.mergeable = "mg" in line.split()[1:]
    return out


def stat_fields(text: str) -> list[str]:
    """Fields of ``/proc/PID/stat`` after the command (``[0]`` is the state letter)."""
    return text[text.rindex(")") + 2 :].split()


def read_kpageflags(proc_root: str | Path, pfns: Iterable[int]) -> dict[int, int]:
    """``{pfn: flags}`` from ``<proc_root>/kpageflags``, reading nearby PFNs (at most
    ``KPF_GAP`` apart) with one pread per run; a PFN beyond the end of the file reads as 0.
    Opening the file may raise ``PermissionError`` (root only) or ``FileNotFoundError``."""
    flags: dict[int, int] = {}
    fd = os.open(Path(proc_root) / "kpageflags", os.O_RDONLY)
    try:
        ordered = sorted(set(pfns))
        i = 0
        while i < len(ordered):
            j = i
            while j + 1 < len(ordered) and ordered[j + 1] - ordered[j] <= KPF_GAP:
                j += 1
            first, count = ordered[i], ordered[j] - ordered[i] + 1
            data = os.pread(fd, 8 * count, first * 8)
            got = len(data) // 8
            words = struct.unpack(f"<{got}Q", data[: 8 * got])
            for pfn in ordered[i : j + 1]:
                flags[pfn] = words[pfn - first] if pfn - first < got else 0
            i = j + 1
    finally:
        os.close(fd)
    return flags


class ProcFs:
    def __init__(self, root: str | Path = "/proc") -> None:
        self.root = Path(root)

    def _read(self, pid: int | str, name: str) -> str:
        try:
            fd = os.open(self.root / str(pid) / name, os.O_RDONLY)
        except FileNotFoundError:
            if not (self.root / str(pid)).exists():
                raise ProcessGone(pid) from None
            raise
        except ProcessLookupError:  # pragma: no cover - raced with exit
            raise ProcessGone(pid) from None
        try:
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        except ProcessLookupError:  # pragma: no cover - raced with exit
            raise ProcessGone(pid) from None
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", errors="replace")

    def _read_optional(self, pid: int | str, name: str) -> str | None:
        try:
            return self._read(pid, name)
        except FileNotFoundError:
            return None

    def pids(self) -> list[int]:
        return sorted(int(p.name) for p in self.root.iterdir() if p.name.isdigit())

    def comm(self, pid: int) -> str:
        try:
            return self._read(pid, "comm").strip()
        except (ProcessGone, OSError):
            return "?"

    def state(self, pid: int) -> str | None:
        """The state letter (``R``, ``S``, ``D``, ``Z``...), None if the process is gone."""
        try:
            return stat_fields(self._read(pid, "stat"))[0]
        except (ProcessGone, OSError, ValueError, IndexError):
            return None

    def start_time(self, pid: int) -> int | None:
        """Start time in clock ticks since boot (field 22): tells a reused pid apart."""
        try:
            return int(stat_fields(self._read(pid, "stat"))[19])
        except (ProcessGone, OSError, ValueError, IndexError):
            return None

    def ksm_stat(self, pid: int) -> dict[str, int | bool] | None:
        """``/proc/PID/ksm_stat`` parsed (None when the kernel has no such file)."""
        text = self._read_optional(pid, "ksm_stat")
        return None if text is None else parse_ksm_stat(text)

    def ksm_merging_pages(self, pid: int) -> int | None:
        text = self._read_optional(pid, "ksm_merging_pages")
        try:
            return None if text is None else int(text.split()[0])
        except (ValueError, IndexError):
            return None

    def proc_fields(self, pid: int) -> tuple[dict[str, int | bool | None], dict[str, str]]:
        """The trace's per-process fields and where a field came from when not ksm_stat."""
        stat = self.ksm_stat(pid) or {}
        sources: dict[str, str] = {}
        out: dict[str, int | bool | None] = {name: stat.get(name) for name in PROC_FIELDS}
        if out["ksm_merging_pages"] is None:  # before 6.4: only ksm_rmap_items in ksm_stat
            out["ksm_merging_pages"] = self.ksm_merging_pages(pid)
            if out["ksm_merging_pages"] is not None:
                sources["ksm_merging_pages"] = "/proc/PID/ksm_merging_pages"
        return out, sources

    def maps(self, pid: int | str) -> list[Vma]:
        return parse_maps(self._read(pid, "maps"))

    def smaps(self, pid: int) -> list[SmapsVma]:
        return parse_smaps(self._read(pid, "smaps"))

    def has_mergeable_vma(self, pid: int) -> bool:
        """Any VMA with VmFlags ``mg`` (for kernels whose ksm_stat lacks ksm_mergeable)."""
        try:
            return any(v.mergeable for v in self.smaps(pid))
        except (ProcessGone, OSError):
            return False

    def pagemap(self, pid: int, start: int, npages: int, page_size: int) -> list[int]:
        """Raw pagemap entries of ``npages`` pages from virtual address ``start``."""
        try:
            fd = os.open(self.root / str(pid) / "pagemap", os.O_RDONLY)
        except FileNotFoundError:
            raise ProcessGone(pid) from None
        try:
            data = os.pread(fd, 8 * npages, (start // page_size) * 8)
        finally:
            os.close(fd)
        if len(data) != 8 * npages:
            raise ProcessGone(pid)
        return list(struct.unpack(f"<{npages}Q", data))

    def kpageflags(self, pfns: Iterable[int]) -> dict[int, int]:
        """``{pfn: flags}`` from ``/proc/kpageflags`` (:func:`read_kpageflags`)."""
        return read_kpageflags(self.root, pfns)

    def ksm_users(self, exclude: Sequence[int] = ()) -> list[dict[str, object]]:
        """Processes (other than ``exclude``) with KSM state: mergeable memory or counters."""
        users: list[dict[str, object]] = []
        skip = set(exclude)
        for pid in self.pids():
            if pid in skip:
                continue
            try:
                stat = self.ksm_stat(pid)
                if stat is None:  # before 6.1: no ksm_stat
                    stat = {"ksm_merging_pages": self.ksm_merging_pages(pid) or 0}
                if not stat:
                    continue  # no mm: a kernel thread, or exiting
                busy = any(
                    v != 0
                    for k, v in stat.items()
                    if not isinstance(v, bool) and k != "ksm_process_profit"
                )
                if "ksm_mergeable" in stat:
                    busy = busy or bool(stat["ksm_mergeable"])
                elif not busy:  # before 6.14: look for VmFlags "mg"
                    busy = bool(self.ksm_merging_pages(pid)) or self.has_mergeable_vma(pid)
            except (ProcessGone, OSError):
                continue
            if busy:
                users.append({"pid": pid, "comm": self.comm(pid), **stat})
        return users

    def find_kthread(self, comm: str) -> int | None:
        """The pid of the kernel thread named ``comm`` (e.g. ``ksmd``), if any."""
        for pid in self.pids():
            if self.comm(pid) == comm:
                try:
                    fields = stat_fields(self._read(pid, "stat"))
                except (ProcessGone, OSError, ValueError):
                    continue
                if fields[1] in ("0", "2"):  # parent: kthreadd (2) or none
                    return pid
        return None
