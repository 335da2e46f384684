"""One process's mergeable memory, page by page, from pagemap and kpageflags.

Standard library only. The mergeable VMAs are those of ``/proc/PID/smaps`` whose
``VmFlags`` contain ``mg`` (VM_MERGEABLE). Their pages, in address order, form one sequence;
a request reads a window ``[offset, offset + limit)`` of it, so a large process is paged
through and never read in one go. Each page gets a cell:

- ``-`` not present (never touched, or swapped out): pagemap bit 63 clear;
- ``Z`` the kernel's zero page (``KPF_ZERO_PAGE``): a KSM-placed zero page
  (use_zero_pages=1) and one mapped by an ordinary read fault look the same here;
- ``K`` a KSM page (``KPF_KSM``); its *group* is the page frame number, so every PTE that maps
  the same physical KSM page gets the same group (and the same shade);
- ``A`` another anonymous page (``KPF_ANON``);
- ``F`` a present page that is not anonymous (page cache of a private file mapping).

``KPF_KSM`` is set on every anonymous page by 6.10-era kernels such as 6.12 (``ksm-model.md``
§11). When a VMA shows more ``KPF_KSM`` pages than its smaps ``KSM:`` line allows, the bit is
taken as unreliable and a page is ``K`` when it is anonymous and ``KPF_DIRTY`` (every KSM
page is marked dirty when it is created), as the kernel replayer does.

Reading PFNs needs root (CAP_SYS_ADMIN): otherwise pagemap shows them as zero, or cannot be
opened at all, and ``/proc/kpageflags`` is root-only. Then the map is *unavailable* and the
answer says why. Nothing here writes.
"""

from __future__ import annotations

import bisect
import errno
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .reader import PAGE_SIZE, ProcessGone

KPF_DIRTY = 4
KPF_ANON = 12
KPF_KSM = 21
KPF_ZERO_PAGE = 24

PM_PRESENT = 1 << 63
PM_PFN_MASK = (1 << 55) - 1

#: longest run of kpageflags entries read with one pread when PFNs are close together
_KPF_GAP = 64


@dataclass
class MergeableVma:
    start: int
    end: int
    perms: str
    name: str
    ksm_kb: int | None  # smaps "KSM:" (6.6+), KSM pages only (not zero pages)
    first_page: int = 0  # index of its first page in the sequence of mergeable pages

    @property
    def pages(self) -> int:
        return (self.end - self.start) // PAGE_SIZE


def parse_smaps_mergeable(text: str) -> list[MergeableVma]:
    """The VMAs of an smaps file whose VmFlags contain ``mg``, in address order."""
    vmas: list[MergeableVma] = []
    current: MergeableVma | None = None
    for line in text.splitlines():
        head = line.split(None, 1)[0] if line.strip() else ""
        if "-" in head and not head.endswith(":"):
            parts = line.split(None, 5)
            lo, _, hi = head.partition("-")
            try:
                current = MergeableVma(int(lo, 16), int(hi, 16),
                                       parts[1] if len(parts) > 1 else "",
                                       parts[5].strip() if len(parts) > 5 else "", None)
            except ValueError:
                current = None
        elif current is not None and head == "KSM:":
            fields = line.split()
            current.ksm_kb = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
        elif current is not None and head == "VmFlags:":
            if "mg" in line.split()[1:]:
                vmas.append(current)
            current = None
    first = 0
    for vma in vmas:
        vma.first_page = first
        first += vma.pages
    return vmas


@dataclass
class PageMap:
    pid: int
    vmas: list[MergeableVma]
    total_pages: int
    offset: int
    limit: int
    available: bool
    reason: str | None = None
    cells: str = ""
    groups: list[list[int]] = field(default_factory=list)  # [index in window, group]
    counts: dict[str, int] = field(default_factory=dict)
    classification: str = "KPF_KSM"


class PageMapUnavailable(Exception):
    """The page map cannot be read; the message says why, in plain words."""


def _open_or_explain(path: Path, what: str) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except PermissionError:
        raise PageMapUnavailable(
            f"{what} is not readable (permission denied): the server must run as root "
            f"(CAP_SYS_ADMIN) to see page frames") from None
    except FileNotFoundError:
        raise PageMapUnavailable(f"{what} does not exist on this kernel") from None


def read_pagemap(proc_root: Path, pid: int, vmas: list[MergeableVma], offset: int,
                 limit: int) -> list[tuple[int, int]]:
    """``[(window index, pagemap entry)]`` for the pages of the window that are present."""
    try:
        fd = os.open(proc_root / str(pid) / "pagemap", os.O_RDONLY)
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None
    except PermissionError:
        raise PageMapUnavailable(
            f"/proc/{pid}/pagemap is not readable (permission denied): the server must run "
            f"as root, or as the owner of process {pid}, to see its pages") from None
    out: list[tuple[int, int]] = []
    end = offset + limit
    try:
        for vma in vmas:
            lo, hi = max(offset, vma.first_page), min(end, vma.first_page + vma.pages)
            if lo >= hi:
                continue
            vpage = vma.start // PAGE_SIZE + (lo - vma.first_page)
            try:
                data = os.pread(fd, 8 * (hi - lo), vpage * 8)
            except OSError as exc:
                if exc.errno in (errno.ESRCH, errno.ENOENT):
                    raise ProcessGone(pid) from None
                if exc.errno in (errno.EPERM, errno.EACCES):
                    raise PageMapUnavailable(
                        f"/proc/{pid}/pagemap cannot be read: {exc.strerror}") from None
                raise
            if len(data) < 8 * (hi - lo):  # the mm went away
                raise ProcessGone(pid)
            for i, entry in enumerate(struct.unpack(f"<{hi - lo}Q", data)):
                if entry & PM_PRESENT:
                    out.append((lo - offset + i, entry))
    finally:
        os.close(fd)
    return out


def read_kpageflags(proc_root: Path, pfns: set[int]) -> dict[int, int]:
    """``{pfn: flags}``, reading nearby PFNs with one pread per run."""
    flags: dict[int, int] = {}
    fd = _open_or_explain(proc_root / "kpageflags", "/proc/kpageflags")
    try:
        ordered = sorted(pfns)
        i = 0
        while i < len(ordered):
            j = i
            while j + 1 < len(ordered) and ordered[j + 1] - ordered[j] <= _KPF_GAP:
                j += 1
            first, count = ordered[i], ordered[j] - ordered[i] + 1
            data = os.pread(fd, 8 * count, first * 8)
            got = len(data) // 8
            words = struct.unpack(f"<{got}Q", data[: 8 * got])
            for pfn in ordered[i: j + 1]:
                if pfn - first < got:
                    flags[pfn] = words[pfn - first]
            i = j + 1
    finally:
        os.close(fd)
    return flags


def _ksm_bit_unreliable(vmas: list[MergeableVma], present: list[tuple[int, int]],
                        flags: dict[int, int], offset: int) -> bool:
    """More KPF_KSM pages in a VMA than its smaps ``KSM:`` line counts (6.10-era kernels)."""
    starts = [v.first_page - offset for v in vmas]  # window-relative, ascending
    ksm_pages = [0] * len(vmas)
    for index, entry in present:
        f = flags.get(entry & PM_PFN_MASK, 0)
        if f >> KPF_KSM & 1 and not f >> KPF_ZERO_PAGE & 1:
            ksm_pages[bisect.bisect_right(starts, index) - 1] += 1
    return any(vma.ksm_kb is not None and n * PAGE_SIZE > vma.ksm_kb * 1024
               for vma, n in zip(vmas, ksm_pages, strict=True))


def classify(vmas: list[MergeableVma], present: list[tuple[int, int]], flags: dict[int, int],
             offset: int, limit: int) -> tuple[str, list[list[int]], str]:
    """Cells of the window, KSM groups ``[index, pfn]`` and the rule that was used."""
    cells = ["-"] * limit
    groups: list[list[int]] = []
    dirty_rule = _ksm_bit_unreliable(vmas, present, flags, offset)
    for index, entry in present:
        pfn = entry & PM_PFN_MASK
        f = flags.get(pfn, 0)
        if f >> KPF_ZERO_PAGE & 1:
            cells[index] = "Z"
        elif (f >> KPF_ANON & 1 and f >> KPF_DIRTY & 1) if dirty_rule else (f >> KPF_KSM & 1):
            cells[index] = "K"
            groups.append([index, pfn])
        elif f >> KPF_ANON & 1:
            cells[index] = "A"
        else:
            cells[index] = "F"
    rule = "KPF_ANON+KPF_DIRTY (KPF_KSM is unreliable on this kernel)" if dirty_rule \
        else "KPF_KSM"
    return "".join(cells), groups, rule


def read_page_map(proc_root: str | Path, pid: int, offset: int, limit: int) -> PageMap:
    """The window ``[offset, offset+limit)`` of ``pid``'s mergeable pages.

    Raises ProcessGone when the process does not exist (or exits meanwhile). When the page
    frames cannot be seen the result has ``available=False`` and a ``reason``.
    """
    root = Path(proc_root)
    try:
        with open(root / str(pid) / "smaps", encoding="utf-8", errors="replace") as f:
            smaps = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None
    except PermissionError:
        return PageMap(pid, [], 0, offset, 0, False,
                       f"/proc/{pid}/smaps is not readable (permission denied): the server "
                       f"must run as root, or as the owner of process {pid}")
    vmas = parse_smaps_mergeable(smaps)
    total = sum(v.pages for v in vmas)
    offset = max(0, min(offset, total))
    limit = max(0, min(limit, total - offset))
    result = PageMap(pid, vmas, total, offset, limit, True)
    if not vmas:
        result.available = False
        result.reason = f"process {pid} has no mergeable VMA (no MADV_MERGEABLE, no merge-any)"
        return result
    try:
        present = read_pagemap(root, pid, vmas, offset, limit)
        if any(e & PM_PFN_MASK == 0 for _, e in present):
            raise PageMapUnavailable(
                "pagemap shows page frame numbers as 0: the kernel hides them from a reader "
                "without CAP_SYS_ADMIN; run the server as root to see the page map")
        flags = read_kpageflags(root, {e & PM_PFN_MASK for _, e in present})
    except PageMapUnavailable as exc:
        result.available = False
        result.reason = str(exc)
        return result
    result.cells, result.groups, result.classification = classify(
        vmas, present, flags, offset, limit)
    result.counts = {c: result.cells.count(c) for c in "-ZKAF"}
    return result
