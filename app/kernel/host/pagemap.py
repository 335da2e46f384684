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
page is marked dirty when it is created), narrowed as the kernel replayer does: a merge can
leave an ordinary dirty page behind copy-on-write, so the candidates must also meet every
VMA's ``KSM:`` count; ``?`` marks frames that are KSM or such a left-over page, which no
interface tells apart.

Which frames are KSM pages is :mod:`.frames`' decision (the replayer's too); the VMAs come
from :func:`.procfs.parse_smaps` and the flags from :func:`.procfs.read_kpageflags`.

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

from . import procfs
from .frames import dirty_anon, has_ksm_bit, is_zero_page, solve_dirty_rule
from .procfs import (
    KPF_ANON,
    KPF_DIRTY,
    PAGE_SIZE,
    PM_PFN_MASK,
    PM_PRESENT,
    ProcessGone,
    SmapsVma,
    parse_smaps,
)


@dataclass
class MergeableVma(SmapsVma):
    first_page: int = 0  # index of its first page in the sequence of mergeable pages

    @property
    def pages(self) -> int:
        return (self.end - self.start) // PAGE_SIZE


def parse_smaps_mergeable(text: str) -> list[MergeableVma]:
    """The VMAs of an smaps file whose VmFlags contain ``mg``, in address order."""
    vmas = [
        MergeableVma(v.start, v.end, v.perms, v.name, v.ksm_kb, v.mergeable)
        for v in parse_smaps(text)
        if v.mergeable
    ]
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


def read_pagemap(
    proc_root: Path, pid: int, vmas: list[MergeableVma], offset: int, limit: int
) -> list[tuple[int, int]]:
    """``[(window index, pagemap entry)]`` for the pages of the window that are present."""
    try:
        fd = os.open(proc_root / str(pid) / "pagemap", os.O_RDONLY)
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(pid) from None
    except PermissionError:
        raise PageMapUnavailable(
            f"/proc/{pid}/pagemap is not readable (permission denied): the server must run "
            f"as root, or as the owner of process {pid}, to see its pages"
        ) from None
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
                        f"/proc/{pid}/pagemap cannot be read: {exc.strerror}"
                    ) from None
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
    """``{pfn: flags}`` (:func:`.procfs.read_kpageflags`, batched); PageMapUnavailable when
    the file cannot be opened, saying why."""
    try:
        return procfs.read_kpageflags(proc_root, pfns)
    except PermissionError:
        raise PageMapUnavailable(
            "/proc/kpageflags is not readable (permission denied): the server must run as "
            "root (CAP_SYS_ADMIN) to see page frames"
        ) from None
    except FileNotFoundError:
        raise PageMapUnavailable("/proc/kpageflags does not exist on this kernel") from None


def _ksm_bit_unreliable(
    vmas: list[MergeableVma], present: list[tuple[int, int]], flags: dict[int, int], offset: int
) -> bool:
    """KPF_KSM shows what it cannot mean (6.10-era kernels): on an anonymous page that is
    not PG_dirty (every KSM page is made dirty when it is created), or on more pages of a
    VMA than its smaps ``KSM:`` line counts."""
    starts = [v.first_page - offset for v in vmas]  # window-relative, ascending
    ksm_pages = [0] * len(vmas)
    for index, entry in present:
        f = flags.get(entry & PM_PFN_MASK, 0)
        if has_ksm_bit(f) and not is_zero_page(f):
            if f >> KPF_ANON & 1 and not f >> KPF_DIRTY & 1:
                return True
            ksm_pages[bisect.bisect_right(starts, index) - 1] += 1
    return any(
        vma.ksm_kb is not None and n * PAGE_SIZE > vma.ksm_kb * 1024
        for vma, n in zip(vmas, ksm_pages, strict=True)
    )


def _solve_dirty(
    vmas: list[MergeableVma],
    present: list[tuple[int, int]],
    flags: dict[int, int],
    offset: int,
    limit: int,
) -> tuple[set[int], set[int]] | None:
    """The dirty rule narrowed by each VMA's smaps ``KSM:`` count (:mod:`.frames`): a
    PG_dirty anonymous frame may also be a page left behind copy-on-write by a merge.
    A VMA only partly in the window bounds the count from both sides."""
    if any(v.ksm_kb is None for v in vmas):
        return None
    starts = [v.first_page - offset for v in vmas]
    pages = (
        (bisect.bisect_right(starts, index) - 1, entry, flags.get(entry & PM_PFN_MASK, 0))
        for index, entry in present
    )
    bounds: dict[int, tuple[int, int]] = {}
    for v, vma in enumerate(vmas):
        lo, hi = max(vma.first_page, offset), min(vma.first_page + vma.pages, offset + limit)
        if lo >= hi:
            continue
        n = (vma.ksm_kb or 0) * 1024 // PAGE_SIZE
        bounds[v] = (max(0, n - (vma.pages - (hi - lo))), n)
    solved = solve_dirty_rule(pages, bounds)
    return None if solved is None else (solved[0], solved[1])


def classify(
    vmas: list[MergeableVma],
    present: list[tuple[int, int]],
    flags: dict[int, int],
    offset: int,
    limit: int,
    dirty_rule: bool | None = None,
) -> tuple[str, list[list[int]], str]:
    """Cells of the window, KSM groups ``[index, pfn]`` and the rule that was used
    (``dirty_rule`` None: decided from what the window shows)."""
    cells = ["-"] * limit
    groups: list[list[int]] = []
    if dirty_rule is None:
        dirty_rule = _ksm_bit_unreliable(vmas, present, flags, offset)
    solved = _solve_dirty(vmas, present, flags, offset, limit) if dirty_rule else None
    for index, entry in present:
        pfn = entry & PM_PFN_MASK
        f = flags.get(pfn, 0)
        if is_zero_page(f):
            cells[index] = "Z"
        elif solved is not None and pfn in solved[1]:
            cells[index] = "?"
        elif (
            (pfn in solved[0])
            if solved is not None
            else dirty_anon(f)
            if dirty_rule
            else has_ksm_bit(f)
        ):
            cells[index] = "K"
            groups.append([index, pfn])
        elif f >> KPF_ANON & 1:
            cells[index] = "A"
        else:
            cells[index] = "F"
    if solved is not None:
        rule = (
            "KPF_ANON+KPF_DIRTY checked against smaps KSM: (KPF_KSM is unreliable on this kernel)"
        )
        if solved[1]:
            rule += "; ? = KSM or left copy-on-write, no interface tells which"
    elif dirty_rule:
        rule = "KPF_ANON+KPF_DIRTY (KPF_KSM is unreliable on this kernel)"
    else:
        rule = "KPF_KSM"
    return "".join(cells), groups, rule


#: most pages read to judge the VMAs a window cuts (the dirty rule needs whole VMAs)
WHOLE_VMA_PAGES = 1 << 20
#: proc roots whose kernel showed an unreliable KPF_KSM (a kernel property: a window that
#: shows no evidence itself is classified as the earlier ones were)
_UNRELIABLE_KPF_KSM: set[str] = set()


def _whole_vmas(
    root: Path,
    pid: int,
    vmas: list[MergeableVma],
    offset: int,
    limit: int,
) -> tuple[str, list[list[int]], str] | None:
    """``classify`` of the window, computed over every VMA it touches, read whole."""
    touched = [v for v in vmas if v.first_page < offset + limit and offset < v.first_page + v.pages]
    lo = touched[0].first_page
    hi = touched[-1].first_page + touched[-1].pages
    if (lo, hi) == (offset, offset + limit) or hi - lo > WHOLE_VMA_PAGES:
        return None
    try:
        present = read_pagemap(root, pid, vmas, lo, hi - lo)
        flags = read_kpageflags(root, {e & PM_PFN_MASK for _, e in present})
    except PageMapUnavailable:
        return None
    cells, groups, rule = classify(vmas, present, flags, lo, hi - lo, dirty_rule=True)
    cut = offset - lo
    return (
        cells[cut : cut + limit],
        [[i - cut, g] for i, g in groups if cut <= i < cut + limit],
        rule,
    )


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
        return PageMap(
            pid,
            [],
            0,
            offset,
            0,
            False,
            f"/proc/{pid}/smaps is not readable (permission denied): the server "
            f"must run as root, or as the owner of process {pid}",
        )
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
                "without CAP_SYS_ADMIN; run the server as root to see the page map"
            )
        flags = read_kpageflags(root, {e & PM_PFN_MASK for _, e in present})
    except PageMapUnavailable as exc:
        result.available = False
        result.reason = str(exc)
        return result
    unreliable = str(root) in _UNRELIABLE_KPF_KSM or _ksm_bit_unreliable(
        vmas, present, flags, offset
    )
    if unreliable:
        _UNRELIABLE_KPF_KSM.add(str(root))
    # the smaps counts are per VMA: with the dirty rule, judge the VMAs the window cuts whole
    whole = _whole_vmas(root, pid, vmas, offset, limit) if unreliable else None
    result.cells, result.groups, result.classification = whole or classify(
        vmas, present, flags, offset, limit, dirty_rule=unreliable
    )
    result.counts = {c: result.cells.count(c) for c in "-ZKAF"}
    if "?" in result.cells:
        result.counts["?"] = result.cells.count("?")
    return result
