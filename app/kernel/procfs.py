"""``/proc`` readers: per-process KSM counters, page frames and flags, maps, KSM users.

The ``/proc`` root is a parameter (``ProcFs(root)``) so parsing can be tested against fixture
trees. Missing files and lines read as ``None`` (older kernels lack some of them, see
``ksm-model.md`` §0.1); a process that vanished raises :class:`ProcessGone`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.trace import PROC_FIELDS as TRACE_PROC_FIELDS

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


def solve_ksm_frames(
    frames: dict[int, dict[Any, int]],
    bounds: dict[Any, tuple[int, int]],
) -> tuple[set[int], set[int]] | None:
    """Which candidate frames are KSM pages, when ``KPF_KSM`` cannot say (6.10-era kernels).

    ``frames`` maps each candidate (anonymous, PG_dirty, in insertion order) to how many
    PTEs map it in each mapping; ``bounds`` gives each mapping's number of KSM PTEs as
    ``(lowest, highest)`` (smaps ``KSM:``; exact when the whole VMA was read). Frames mapped
    alike are interchangeable: every choice of how many of each such group are KSM that
    meets every bound is enumerated. Returns ``(ksm, ambiguous)``: the KSM frames of the
    first choice (most mapped groups first, each as KSM as it can be: a KSM frame gathers
    mappings) and the frames whose status differs between choices or within their group,
    which no userspace interface tells apart. None when no choice meets the bounds.
    """
    groups: dict[tuple[tuple[Any, int], ...], list[int]] = {}
    for pfn, sig in frames.items():
        groups.setdefault(tuple(sorted(sig.items(), key=repr)), []).append(pfn)
    gl = sorted(groups.items(), key=lambda g: -sum(n for _, n in g[0]))
    solutions, complete = count_solutions(
        [dict(sig) for sig, _ in gl], [len(m) for _, m in gl], bounds
    )
    if not solutions:
        return None
    ksm: set[int] = set()
    ambiguous: set[int] = set()
    for i, (_, members) in enumerate(gl):
        ks = {sol[i] for sol in solutions}
        ksm.update(members[: solutions[0][i]])
        if not complete or len(ks) > 1 or 0 < solutions[0][i] < len(members):
            ambiguous.update(members)
    return ksm, ambiguous


def count_solutions(
    sigs: list[dict[Any, int]],
    sizes: list[int],
    bounds: dict[Any, tuple[int, int]],
    limit: int = 64,
    budget: int = 200_000,
) -> tuple[list[list[int]], bool]:
    """Every way (up to ``limit``) to choose how many frames of each group are KSM pages.

    Group ``i`` has ``sizes[i]`` interchangeable frames, each mapped ``sigs[i][m]`` times
    in mapping ``m``; a choice must give every mapping between ``bounds[m]`` KSM PTEs
    (both included). Groups are tried in the order given, each from "all" down to "none".
    The flag is False when the search stopped at ``limit`` solutions or ``budget`` calls.
    """
    out: list[list[int]] = []
    low = {m: lo for m, (lo, _) in bounds.items()}  # still needed
    high = {m: hi for m, (_, hi) in bounds.items()}  # still allowed
    # what the groups from i on can still add to each mapping, to prune early
    room: list[dict[Any, int]] = [{} for _ in range(len(sigs) + 1)]
    for i in range(len(sigs) - 1, -1, -1):
        room[i] = dict(room[i + 1])
        for m, n in sigs[i].items():
            room[i][m] = room[i].get(m, 0) + n * sizes[i]
    pick: list[int] = []
    steps = 0

    def go(i: int) -> None:
        nonlocal steps
        steps += 1
        if len(out) >= limit or steps > budget:
            return
        if any(v < 0 for v in high.values()) or any(v > room[i].get(m, 0) for m, v in low.items()):
            return
        if i == len(sigs):
            out.append(list(pick))
            return
        for k in range(sizes[i], -1, -1):
            for m, n in sigs[i].items():
                low[m] = low.get(m, 0) - k * n
                high[m] = high.get(m, 1 << 62) - k * n
            pick.append(k)
            go(i + 1)
            pick.pop()
            for m, n in sigs[i].items():
                low[m] += k * n
                high[m] += k * n

    go(0)
    return out, len(out) < limit and steps <= budget


class ProcessGone(Exception):
    """The process no longer exists."""


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
    ksm_kb: int | None = None  # the ``KSM:`` line (6.6+), None when absent
    mergeable: bool = False  # VmFlags ``mg``


def parse_smaps(text: str) -> list[SmapsVma]:
    """Per VMA of an smaps file: range, ``KSM:`` kB and whether VmFlags has ``mg``."""
    out: list[SmapsVma] = []
    for line in text.splitlines():
        head = line.split(None, 1)[0] if line else ""
        if "-" in head and not head.endswith(":"):
            lo, _, hi = head.partition("-")
            try:
                out.append(SmapsVma(int(lo, 16), int(hi, 16)))
            except ValueError:
                continue
        elif head == "KSM:" and out:
            out[-1].ksm_kb = int(line.split()[1])
        elif head == "VmFlags:" and out:
            out[-1].mergeable = "mg" in line.split()[1:]
    return out


def stat_fields(text: str) -> list[str]:
    """Fields of ``/proc/PID/stat`` after the command (``[0]`` is the state letter)."""
    return text[text.rindex(")") + 2 :].split()


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
        """``{pfn: flags}`` from ``/proc/kpageflags``."""
        out: dict[int, int] = {}
        fd = os.open(self.root / "kpageflags", os.O_RDONLY)
        try:
            for pfn in sorted(set(pfns)):
                data = os.pread(fd, 8, pfn * 8)
                out[pfn] = struct.unpack("<Q", data)[0] if len(data) == 8 else 0
        finally:
            os.close(fd)
        return out

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
