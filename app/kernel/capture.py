"""``ksmlab capture``: snapshot real processes' private memory into a ``ksm-capture/1`` file.

Read-only: the processes are never stopped (no ptrace stop) nor altered. For each process
its anonymous private mappings (``/proc/PID/smaps``: private, no file, or ``[heap]``,
``[stack]``, ``[anon:...]``) and its KSM-compatible private file mappings (a library's
data, relocated read-only data and text: ``PR_SET_MEMORY_MERGE`` and ``MADV_MERGEABLE``
mark them too, and their copy-on-write pages are anonymous pages KSM merges) are read page
by page:

1. ``/proc/PID/pagemap`` first: a page not present (never touched) or swapped out is not
   read at all (reading it through ``/proc/PID/mem`` would fault it in and so alter the
   process); a present page that is not anonymous (``PM_FILE``: a page-cache page of a
   file mapping) is not read either, only flagged :data:`sim.capture.FILE` (ksmd walks
   it and skips it); with root, a page mapped to the kernel's zero page
   (``KPF_ZERO_PAGE`` in ``/proc/kpageflags``) is known to be zero without reading it.
2. The other present pages are read with large ``pread``\\ s of ``/proc/PID/mem`` (runs of
   present pages, up to :data:`CHUNK_BYTES` at a time) and fingerprinted, 4 KiB at a time,
   with a keyed hash whose key lives in this process only (:class:`sim.capture.ClassTable`);
   the classes are renumbered densely at the end, in an order a random salt decides, so no
   hash is stored. With ``memcmp_order`` the classes are numbered in the order of their
   bytes instead (the order of the kernel's trees): each class keeps its first
   :data:`ORDER_PREFIX` bytes in memory while capturing, and the classes whose prefixes tie
   are read once more, one page each, and compared whole (a page that changed meanwhile
   keeps its prefix and the salted order among its ties). Neither is stored.
3. With root, the KSM state of each page (KSM page, zero page, plain) from kpageflags:
   ``KPF_KSM``, or, on kernels whose ``KPF_KSM`` is unreliable (6.10-era), the dirty rule
   and its solver against smaps' ``KSM:`` counts (:mod:`app.kernel.host.frames`); THP from
   ``KPF_THP``. Without root (pagemap then hides frame numbers) the KSM state is unknown
   and the capture says so; contents are still read (a parent may read its child).

With ``snapshots=K`` the memory is read K times, ``interval_s`` apart (start to start):
each page's count of content changes between consecutive snapshots is kept (the write rate
the checksum gate will see); the classes are the last snapshot's.

Errors are :class:`CaptureFailed` with one line: a process that is gone, a kernel thread
(no mm), no permission, nothing matched. Standard library and ``sim`` only.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import re
import secrets
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sim.capture import (
    FILE,
    KSM_AMBIGUOUS,
    KSM_MASK,
    KSM_PAGE,
    KSM_SHIFT,
    KSM_ZERO_PFN,
    MAX_CHANGES,
    PRESENT,
    SWAPPED,
    THP,
    Capture,
    CapturedMapping,
    CapturedProcess,
    ClassTable,
)

from .host.frames import dirty_anon, is_zero_page, solve_dirty_rule
from .host.procfs import (
    KPF_ANON,
    KPF_DIRTY,
    KPF_KSM,
    KPF_ZERO_PAGE,
    PAGE_SIZE,
    PM_PFN_MASK,
    PM_PRESENT,
    PM_SWAP,
    ProcessGone,
    ProcFs,
    SmapsVma,
    parse_ksm_stat,
    parse_smaps,
    read_kpageflags,
    stat_fields,
)

#: bytes read from /proc/PID/mem at a time (a run of present pages is cut into these)
CHUNK_BYTES = 4 << 20
#: pagemap entries read at a time
PAGEMAP_CHUNK = 1 << 16
KPF_THP = 22
PF_KTHREAD = 0x00200000
#: names of the anonymous private VMAs a capture reads ("" is plain anonymous memory)
ANON_NAMES = ("", "[heap]", "[stack]")
#: pagemap: a file page or a shared-anonymous page (not an anonymous page of this mm)
PM_FILE = 1 << 61
#: VmFlags that make a VMA KSM-incompatible (``vma_ksm_compatible``/``ksm_compatible``:
#: VM_SHARED, VM_MAYSHARE, VM_PFNMAP, VM_IO, VM_DONTEXPAND, VM_HUGETLB, VM_MIXEDMAP)
KSM_INCOMPATIBLE = frozenset({"sh", "ms", "pf", "io", "de", "ht", "mm"})

#: progress callback: (pages done, pages to do, snapshot number from 1)
Progress = Callable[[int, int, int], None]


class CaptureFailed(Exception):
    """The capture cannot be made; the message is one line saying why."""


# --------------------------------------------------------------------- selection
def is_anon_private(v: SmapsVma) -> bool:
    return (
        len(v.perms) >= 4
        and v.perms[3] == "p"
        and (v.name in ANON_NAMES or v.name.startswith("[anon:"))
        and v.end > v.start
    )


def is_file_private(v: SmapsVma, vmflags: frozenset[str]) -> bool:
    """A private file mapping KSM may mark mergeable (``vma_ksm_compatible``): a path, not
    shared, none of :data:`KSM_INCOMPATIBLE` (``[vdso]``, ``[vvar]`` and the like have a
    bracketed name and are VM_DONTEXPAND or VM_PFNMAP)."""
    return (
        len(v.perms) >= 4
        and v.perms[3] == "p"
        and v.name.startswith("/")
        and v.end > v.start
        and not vmflags & KSM_INCOMPATIBLE
    )


def vm_flags(smaps_text: str) -> dict[int, frozenset[str]]:
    """``{VMA start: its VmFlags}`` of an smaps file."""
    out: dict[int, frozenset[str]] = {}
    start: int | None = None
    for line in smaps_text.splitlines():
        if line.startswith("VmFlags:"):
            if start is not None:
                out[start] = frozenset(line.split()[1:])
            continue
        head = line.split(None, 1)[0] if line.strip() else ""
        if "-" in head and not head.endswith(":"):
            try:
                start = int(head.partition("-")[0], 16)
            except ValueError:
                start = None
    return out


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None


def process_cgroup(root: Path, pid: int) -> str:
    """The cgroup v2 path of a process (``0::/path``), "" when unknown."""
    text = _read_text(root / str(pid) / "cgroup") or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    return ""


def is_kernel_thread(root: Path, pid: int) -> bool:
    text = _read_text(root / str(pid) / "stat")
    if text is None:
        return False
    try:
        return bool(int(stat_fields(text)[6]) & PF_KTHREAD)
    except (ValueError, IndexError):
        return False


def find_pids(
    *,
    name: str | None = None,
    cgroup: str | None = None,
    qemu: bool = False,
    proc_root: str | Path = "/proc",
) -> list[int]:
    """User processes (not this one, no kernel thread) whose comm or cmdline's first word
    matches the regular expression ``name``, or that live in ``cgroup`` (a cgroup v2 path,
    with or without ``/sys/fs/cgroup``; sub-groups included), or every qemu process."""
    root = Path(proc_root)
    pattern = re.compile(name) if name is not None else None
    if cgroup is not None:
        cgroup = "/" + cgroup.removeprefix("/sys/fs/cgroup").strip("/")
    out = []
    for pid in ProcFs(root).pids():
        if pid == os.getpid() or is_kernel_thread(root, pid):
            continue
        comm = (_read_text(root / str(pid) / "comm") or "").strip()
        exe = _first_word(_read_text(root / str(pid) / "cmdline") or "")
        if pattern is not None and not (
            pattern.search(comm) or pattern.search(os.path.basename(exe))
        ):
            continue
        if qemu and not (comm.startswith("qemu-") or os.path.basename(exe).startswith("qemu-")):
            continue
        if cgroup is not None:
            cg = process_cgroup(root, pid)
            if not (cg == cgroup or cg.startswith(cgroup.rstrip("/") + "/")):
                continue
        if comm:
            out.append(pid)
    return out


def _first_word(cmdline: str) -> str:
    return cmdline.split("\0", 1)[0]


# ----------------------------------------------------------------------- reading
@dataclass
class _Proc:
    """What a capture knows of a process while it reads it."""

    info: CapturedProcess
    vmas: list[SmapsVma]
    mem: int  # fd of /proc/PID/mem
    pagemap: int  # fd of /proc/PID/pagemap


def _start_order(root: Path, pid: int) -> tuple[int, int]:
    """A process's start time (clock ticks since boot, ``/proc/PID/stat`` field 22), then
    its pid: the order processes are captured in, and simulated in. KSM scans its users in
    the order they joined it (``ksm_enter``: their first ``MADV_MERGEABLE`` or
    ``PR_SET_MEMORY_MERGE``), which start order approximates (a process that joined later
    than another started later is scanned in the other's place: no interface says when a
    process joined). A process whose stat cannot be read sorts last (opening it then says
    why)."""
    try:
        stat = (root / str(pid) / "stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[19]), pid
    except (OSError, ValueError, IndexError):
        return 1 << 62, pid


def _open_process(root: Path, pid: int, mergeable_only: bool = False, files: bool = True) -> _Proc:
    base = root / str(pid)
    if not base.exists():
        raise CaptureFailed(f"process {pid} does not exist")
    if is_kernel_thread(root, pid):
        raise CaptureFailed(f"process {pid} is a kernel thread: it has no memory to capture")
    try:
        smaps_text = (base / "smaps").read_bytes().decode("utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        raise CaptureFailed(f"process {pid} is gone") from None
    except PermissionError:
        raise CaptureFailed(
            f"no permission to read /proc/{pid}/smaps: run ksmlab capture as root"
        ) from None
    if not smaps_text.strip() and not (base / "exe").exists():
        raise CaptureFailed(f"process {pid} has no memory (a kernel thread or a zombie)")
    flags_of = vm_flags(smaps_text) if files else {}
    vmas = []
    file_vma = []
    for v in parse_smaps(smaps_text):
        if mergeable_only and not v.mergeable:
            continue
        if is_anon_private(v):
            vmas.append(v)
            file_vma.append(False)
        elif files and is_file_private(v, flags_of.get(v.start, frozenset())):
            vmas.append(v)
            file_vma.append(True)
    fds = []
    try:
        for name in ("mem", "pagemap"):
            fds.append(os.open(base / name, os.O_RDONLY))
    except (FileNotFoundError, ProcessLookupError):
        for fd in fds:
            os.close(fd)
        raise CaptureFailed(f"process {pid} is gone") from None
    except PermissionError:
        for fd in fds:
            os.close(fd)
        raise CaptureFailed(
            f"no permission to read /proc/{pid}/mem: run ksmlab capture as root "
            "(or capture your own child process)"
        ) from None
    stat_text = _read_text(base / "ksm_stat")
    stat = parse_ksm_stat(stat_text) if stat_text else None
    merge_any = stat.get("ksm_merge_any") if stat else None
    info = CapturedProcess(
        pid,
        (_read_text(base / "comm") or "?").strip()[:64],
        _first_word(_read_text(base / "cmdline") or "")[:4096],
        process_cgroup(root, pid)[:4096],
        merge_any if isinstance(merge_any, bool) else None,
        stat,
        [
            CapturedMapping(
                v.start, (v.end - v.start) // PAGE_SIZE, v.name[:256], v.mergeable, file=f
            )
            for v, f in zip(vmas, file_vma, strict=True)
        ],
    )
    return _Proc(info, vmas, fds[0], fds[1])


def _pagemap(p: _Proc, m: CapturedMapping) -> array[int]:
    out = array("Q")
    vpage = m.start // PAGE_SIZE
    for lo in range(0, m.pages, PAGEMAP_CHUNK):
        n = min(PAGEMAP_CHUNK, m.pages - lo)
        try:
            data = os.pread(p.pagemap, 8 * n, (vpage + lo) * 8)
        except OSError as exc:
            if exc.errno in (errno.ESRCH, errno.ENOENT):
                raise CaptureFailed(f"process {p.info.pid} exited during the capture") from None
            raise
        if len(data) < 8 * n:
            raise CaptureFailed(f"process {p.info.pid} exited during the capture")
        chunk = array("Q")
        chunk.frombytes(data)
        if sys.byteorder == "big":  # pragma: no cover
            chunk.byteswap()
        out.extend(chunk)
    return out


#: bytes of each class's page kept while capturing with ``memcmp_order``
ORDER_PREFIX = 64


@dataclass
class _Snapshot:
    """One reading of every page: presence, salted digest, flags (KSM state, THP)."""

    digests: array[int]
    flags: bytearray
    present: bytearray
    rule: str
    root_view: bool  # frame numbers were visible (root)


class _VmReader:
    """``process_vm_readv``: many ranges of another process read with one system call
    (up to :data:`IOV_MAX` ranges, :data:`CHUNK_BYTES` bytes); it never stops the process.
    None of it is used when the C library lacks the call: ``pread`` of ``/proc/PID/mem``."""

    IOV_MAX = 1024

    class IoVec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.call = libc.process_vm_readv
        self.call.restype = ctypes.c_ssize_t
        self.call.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_ulong,
            ctypes.c_void_p,
            ctypes.c_ulong,
            ctypes.c_ulong,
        ]
        self.buf = bytearray(CHUNK_BYTES)
        self.cbuf = (ctypes.c_char * CHUNK_BYTES).from_buffer(self.buf)
        self.local = self.IoVec(ctypes.addressof(self.cbuf), CHUNK_BYTES)
        self.remote = (self.IoVec * self.IOV_MAX)()

    def read(self, pid: int, ranges: Sequence[tuple[int, int]]) -> bytes:
        """The bytes of ``ranges`` (address, length), one after the other; shorter when a
        range could not be read (the rest is not read)."""
        for n, (addr, length) in enumerate(ranges):
            self.remote[n].base = addr
            self.remote[n].len = length
        self.local.len = sum(length for _, length in ranges)
        got = self.call(pid, ctypes.byref(self.local), 1, self.remote, len(ranges), 0)
        if got < 0:
            err = ctypes.get_errno()
            if err == errno.ESRCH:
                raise CaptureFailed(f"process {pid} exited during the capture")
            if err in (errno.EPERM, errno.EACCES):
                raise CaptureFailed(f"no permission to read the memory of process {pid}")
            got = 0  # EFAULT (unmapped meanwhile), ...: the caller reads page by page
        return bytes(self.buf[:got])


def _vm_reader() -> _VmReader | None:
    try:
        return _VmReader()
    except (AttributeError, OSError):  # pragma: no cover - every Linux libc has it
        return None


def _pread_pages(p: _Proc, addr: int, count: int) -> bytes:
    """``count`` pages from ``addr`` with pread of /proc/PID/mem, short at the first page
    that cannot be read (unmapped meanwhile)."""
    try:
        return os.pread(p.mem, count * PAGE_SIZE, addr)
    except OSError as exc:
        if exc.errno in (errno.ESRCH, errno.ENOENT):
            raise CaptureFailed(f"process {p.info.pid} exited during the capture") from None
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise CaptureFailed(f"no permission to read /proc/{p.info.pid}/mem") from None
        if exc.errno == errno.EIO:
            return b""
        raise


def _read_snapshot(
    procs: Sequence[_Proc],
    table: ClassTable,
    root: Path,
    total: int,
    progress: Progress | None,
    number: int,
    keys: dict[int, tuple[bytes, int, int]] | None = None,
) -> _Snapshot:
    """One reading of every page of ``procs``; with ``keys``, each fingerprint met for the
    first time is added to it as (its page's first :data:`ORDER_PREFIX` bytes, process
    index, address)."""
    digests = array("q", [0]) * total
    flags = bytearray(total)
    present = bytearray(total)
    zero = table.zero
    reader = _vm_reader()
    most = CHUNK_BYTES // PAGE_SIZE
    done = 0
    root_view = True
    rules: set[str] = set()
    ksm_flag = KSM_PAGE << KSM_SHIFT
    zero_flag = PRESENT | KSM_ZERO_PFN << KSM_SHIFT
    for pi, p in enumerate(procs):
        entries = [_pagemap(p, m) for m in p.info.mappings]
        pfns = {
            e & PM_PFN_MASK for ents in entries for e in ents if e & PM_PRESENT and not e & PM_FILE
        }
        kflags: dict[int, int] = {}
        if pfns and pfns != {0}:
            try:
                kflags = read_kpageflags(root, pfns)
            except (PermissionError, FileNotFoundError):
                root_view = False
        elif pfns:
            root_view = False
        ksm_of: dict[int, int] | None = None
        if kflags and _ksm_bit_unreliable(kflags.values()):
            ksm_of = _ksm_states_dirty(p, entries, kflags, rules)
        elif kflags:
            rules.add("KPF_KSM")
        counts = [0] * len(entries)
        # (column index, address, pages): runs of present pages to read
        runs: list[tuple[int, int, int]] = []
        for n, (m, ents) in enumerate(zip(p.info.mappings, entries, strict=True)):
            base = m.first
            run_i = run_n = 0
            for j, e in enumerate(ents):
                if not e & PM_PRESENT:
                    if e & PM_SWAP:
                        flags[base + j] = SWAPPED
                    continue
                if e & PM_FILE:  # a page-cache page: walked by ksmd, never read here
                    flags[base + j] = FILE
                    continue
                i = base + j
                present[i] = 1
                if kflags:
                    kf = kflags[e & PM_PFN_MASK]
                    if kf >> KPF_ZERO_PAGE & 1:
                        flags[i] = zero_flag
                        digests[i] = zero
                        continue
                    f = PRESENT | (THP if kf >> KPF_THP & 1 else 0)
                    if ksm_of is not None:
                        f |= ksm_of.get(i, 0) << KSM_SHIFT
                    elif kf >> KPF_KSM & 1:
                        f |= ksm_flag
                        counts[n] += 1
                    flags[i] = f
                else:
                    flags[i] = PRESENT
                if run_n and i == run_i + run_n and run_n < most:
                    run_n += 1
                else:
                    if run_n:
                        runs.append((run_i, m.start + (run_i - base) * PAGE_SIZE, run_n))
                    run_i, run_n = i, 1
            if run_n:
                runs.append((run_i, m.start + (run_i - base) * PAGE_SIZE, run_n))
        if ksm_of is None and any(
            v.ksm_kb is not None and c * PAGE_SIZE > v.ksm_kb * 1024
            for v, c in zip(p.vmas, counts, strict=True)
        ):  # more KPF_KSM pages than smaps counts: the bit is unreliable after all
            rules.discard("KPF_KSM")
            ksm_of = _ksm_states_dirty(p, entries, kflags, rules)
            for m in p.info.mappings:
                for i in range(m.first, m.first + m.pages):
                    f = flags[i]
                    if f & PRESENT and (f & KSM_MASK) >> KSM_SHIFT != KSM_ZERO_PFN:
                        flags[i] = (f & ~KSM_MASK) | ksm_of.get(i, 0) << KSM_SHIFT
        done += sum(m.pages for m in p.info.mappings) - sum(r[2] for r in runs)
        # read the runs, batched
        k = 0
        while k < len(runs):
            batch = [runs[k]]
            size = runs[k][2]
            k += 1
            while (
                k < len(runs)
                and reader is not None
                and len(batch) < _VmReader.IOV_MAX
                and size + runs[k][2] <= most
            ):
                batch.append(runs[k])
                size += runs[k][2]
                k += 1
            if reader is not None:
                data = reader.read(p.info.pid, [(a, c * PAGE_SIZE) for _, a, c in batch])
            else:
                data = _pread_pages(p, batch[0][1], batch[0][2])
            view = memoryview(data)  # read-only: hash() takes its slices as they are
            off = 0
            for col, addr, count in batch:
                avail = max(0, min(count, (len(data) - off) // PAGE_SIZE))
                if avail < count:  # cut short: the rest page by page
                    rest = b"".join(
                        _pread_pages(p, addr + q * PAGE_SIZE, 1) for q in range(avail, count)
                    )
                    chunk = memoryview(bytes(view[off : off + avail * PAGE_SIZE]) + rest)
                    off = len(data)
                else:
                    chunk = view[off : off + count * PAGE_SIZE]
                    off += count * PAGE_SIZE
                got = len(chunk) // PAGE_SIZE
                digs = [
                    hash(chunk[o : o + PAGE_SIZE]) for o in range(0, got * PAGE_SIZE, PAGE_SIZE)
                ]
                digests[col : col + got] = array("q", digs)
                if keys is not None:
                    for q, d in enumerate(digs):
                        if d not in keys:
                            o = q * PAGE_SIZE
                            keys[d] = (bytes(chunk[o : o + ORDER_PREFIX]), pi, addr + o)
                for q in range(col + got, col + count):  # could not be read: absent
                    present[q] = 0
                    flags[q] = 0
            done += size
            if progress is not None:
                progress(done, total, number)
        if progress is not None:
            progress(done, total, number)
    rule = "; ".join(sorted(rules)) if rules else ("KPF_KSM" if root_view else "")
    return _Snapshot(digests, flags, present, rule, root_view)


def _memcmp_keys(
    procs: Sequence[_Proc], keys: dict[int, tuple[bytes, int, int]], snap: _Snapshot, zero: int
) -> dict[int, bytes]:
    """Each present class's memcmp sort key: its prefix when no other class shares it,
    else its whole page, read again now (the prefix alone when the page changed since)."""
    seen = {d for d, p in zip(snap.digests, snap.present, strict=True) if p}
    seen.discard(zero)
    by_prefix: dict[bytes, list[int]] = {}
    for d in seen:
        k = keys.get(d)
        if k is not None:
            by_prefix.setdefault(k[0], []).append(d)
    out: dict[int, bytes] = {}
    for prefix, ds in by_prefix.items():
        if len(ds) == 1:
            out[ds[0]] = prefix
            continue
        for d in ds:
            _, pi, addr = keys[d]
            page = _pread_pages(procs[pi], addr, 1)
            out[d] = page if len(page) == PAGE_SIZE and hash(page) == d else prefix
    return out


def _ksm_bit_unreliable(values: Iterable[int]) -> bool:
    """KPF_KSM on an anonymous page that is not PG_dirty: a 6.10-era kernel's KPF_KSM."""
    for f in values:
        if f >> KPF_KSM & 1 and f >> KPF_ANON & 1 and not f >> KPF_DIRTY & 1:
            if not f >> KPF_ZERO_PAGE & 1:
                return True
    return False


def _ksm_states_dirty(
    p: _Proc, entries: list[array[int]], kflags: dict[int, int], rules: set[str]
) -> dict[int, int]:
    """``{page index: KSM state}`` of the KSM pages by the dirty rule and its solver."""
    pages: list[tuple[int, int, int, int]] = []  # (page index, mapping number, entry, flags)
    for n, (m, ents) in enumerate(zip(p.info.mappings, entries, strict=True)):
        for j, e in enumerate(ents):
            if e & PM_PRESENT and not e & PM_FILE:
                pages.append((m.first + j, n, e, kflags.get(e & PM_PFN_MASK, 0)))
    if any(v.ksm_kb is None for v in p.vmas):
        rules.add("dirty rule, unchecked (no smaps KSM: line)")
        return {i: KSM_PAGE for i, _, _, f in pages if dirty_anon(f) and not is_zero_page(f)}
    bounds = {n: ((v.ksm_kb or 0) * 1024 // PAGE_SIZE,) * 2 for n, v in enumerate(p.vmas)}
    solved = solve_dirty_rule(((n, e, f) for _, n, e, f in pages), bounds)
    if solved is None:
        rules.add("unknown (the dirty rule found no solution)")
        return {}
    ksm, ambiguous, _ = solved
    rules.add("KPF_ANON+KPF_DIRTY checked against smaps KSM: (KPF_KSM is unreliable)")
    out = {}
    for i, _, e, _ in pages:
        pfn = e & PM_PFN_MASK
        if pfn in ambiguous:
            out[i] = KSM_AMBIGUOUS
        elif pfn in ksm:
            out[i] = KSM_PAGE
    return out


def capture_processes(
    pids: Sequence[int],
    *,
    snapshots: int = 1,
    interval_s: float = 0.0,
    progress: Progress | None = None,
    proc_root: str | Path = "/proc",
    salt: bytes | None = None,
    mergeable_only: bool = False,
    files: bool = True,
    memcmp_order: bool = False,
) -> Capture:
    """Capture the private memory of ``pids`` (see the module docstring); with
    ``mergeable_only`` only the mappings that are VM_MERGEABLE now (a qemu guest's RAM);
    ``files=False`` leaves the private file mappings out (anonymous mappings only, a
    version 1 file as before); ``memcmp_order`` numbers the classes in the order of their
    bytes (``class_order: "memcmp"``)."""
    if not pids:
        raise CaptureFailed("no process to capture")
    if snapshots < 1:
        raise CaptureFailed("--snapshots must be at least 1")
    if interval_s < 0:
        raise CaptureFailed("--interval must be >= 0")
    root = Path(proc_root)
    table = ClassTable(salt if salt is not None else secrets.token_bytes(32), PAGE_SIZE)
    procs: list[_Proc] = []
    try:
        for pid in sorted(dict.fromkeys(pids), key=lambda pid: _start_order(root, pid)):
            procs.append(_open_process(root, pid, mergeable_only, files))
        cap_procs = [p.info for p in procs]
        # mapping offsets into the columns (Capture.index does the same)
        first = 0
        for info in cap_procs:
            for m in info.mappings:
                m.first = first
                first += m.pages
        total = first
        changes = array("H", [0]) * total if snapshots > 1 else array("H")
        keys: dict[int, tuple[bytes, int, int]] | None = {} if memcmp_order else None
        t0 = time.monotonic()
        last: _Snapshot | None = None
        for k in range(snapshots):
            if k:
                wait = t0 + k * interval_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            started = time.monotonic()
            snap = _read_snapshot(procs, table, root, total, progress, k + 1, keys)
            if last is not None:
                for i in range(total):
                    if (
                        snap.present[i] != last.present[i]
                        or (snap.present[i] and snap.digests[i] != last.digests[i])
                    ) and changes[i] < MAX_CHANGES:
                        changes[i] += 1
            else:
                t_first = started
            last = snap
        assert last is not None
        period = (started - t_first) if snapshots > 1 else 0.0
        order = None if keys is None else _memcmp_keys(procs, keys, last, table.zero)
        keys = None  # the prefixes go as soon as the order is known
    except ProcessGone as exc:
        raise CaptureFailed(f"process {exc} exited during the capture") from None
    finally:
        for p in procs:
            os.close(p.mem)
            os.close(p.pagemap)
    cls, nclasses = table.renumber(last.digests, last.present, order)
    del order
    flags = array("B", bytes(last.flags))
    notes = []
    if not last.root_view:
        notes.append(
            "frame numbers were hidden (not root): KSM state and THP unknown, "
            "zero-page mappings read as zero-filled pages"
        )
    uname = os.uname()
    return Capture(
        cap_procs,
        flags,
        cls,
        changes,
        classes=nclasses,
        snapshots=snapshots,
        period_s=round(period, 6),
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        host={"kernel": uname.release, "machine": uname.machine, "page_size": PAGE_SIZE},
        ksm_rule=last.rule or "unknown (not root)",
        notes=notes,
        class_order="memcmp" if memcmp_order else "salted",
    )


# ---------------------------------------------------------------------------- CLI
class Bar:
    """A progress bar on stderr: redrawn in place on a terminal, else a line every 10 s."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int, snapshot: int) -> None:
        now = time.monotonic()
        final = done >= total
        if not final and now - self.last < (0.1 if self.tty else 10.0):
            return
        self.last = now
        width = 30
        fill = width * done // total if total else width
        mb = done * PAGE_SIZE / 1e6
        rate = mb / max(now - self.t0, 1e-6)
        line = (
            f"[{'#' * fill}{'.' * (width - fill)}] capture snapshot {snapshot}: "
            f"{mb:,.0f}/{total * PAGE_SIZE / 1e6:,.0f} MB, {rate:,.0f} MB/s"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def register(subparsers: Any) -> None:
    cp = subparsers.add_parser(
        "capture",
        help="capture processes' private memory for a what-if prediction (root)",
        description="Snapshot the private memory of processes (anonymous mappings and the "
        "copy-on-write pages of private file mappings) into a ksm-capture/1 "
        "file: per page presence, a salted content class (no content, no hash stored), "
        "KSM state and, with --snapshots, how often it changed. Read-only: the processes "
        "are never stopped.",
    )
    sel = cp.add_mutually_exclusive_group(required=True)
    sel.add_argument("--pid", type=int, action="append", help="a process id (repeatable)")
    sel.add_argument("--name", metavar="REGEX", help="processes whose name matches REGEX")
    sel.add_argument("--cgroup", metavar="PATH", help="processes of a cgroup (v2) and below")
    sel.add_argument("--qemu", action="store_true", help="every qemu process")
    cp.add_argument("--snapshots", type=int, default=1, help="readings of the memory (1)")
    cp.add_argument("--interval", type=float, default=10.0, help="seconds between snapshots (10)")
    cp.add_argument(
        "--mergeable-only",
        action="store_true",
        help="only the mappings that are VM_MERGEABLE now (e.g. a qemu guest's RAM)",
    )
    cp.add_argument(
        "--anon-only",
        action="store_true",
        help="leave out the private file mappings (their copy-on-write pages; version 1 file)",
    )
    cp.add_argument(
        "--memcmp-order",
        action="store_true",
        help="number the content classes in the order of the pages' bytes (the order of "
        "KSM's trees, so the prediction's timing follows the kernel's tree walks); the file "
        "then says which page sorts before which (docs/whatif.md, Privacy)",
    )
    cp.add_argument("-o", "--out", type=Path, required=True, help="the capture file to write")
    cp.add_argument("--no-progress", action="store_true", help="no progress bar")
    cp.set_defaults(func=cmd_capture)


def cmd_capture(args: argparse.Namespace) -> int:
    try:
        if args.pid:
            pids = list(args.pid)
        else:
            try:
                pids = find_pids(name=args.name, cgroup=args.cgroup, qemu=args.qemu)
            except re.error as exc:
                raise CaptureFailed(f"bad --name regular expression: {exc}") from None
            if not pids:
                what = (
                    f"--name {args.name!r}"
                    if args.name
                    else f"--cgroup {args.cgroup!r}"
                    if args.cgroup
                    else "--qemu"
                )
                raise CaptureFailed(f"no process matched {what}")
        t0 = time.monotonic()
        cap = capture_processes(
            pids,
            snapshots=args.snapshots,
            interval_s=args.interval,
            progress=None if args.no_progress else Bar(),
            mergeable_only=args.mergeable_only,
            files=not args.anon_only,
            memcmp_order=args.memcmp_order,
        )
        elapsed = time.monotonic() - t0
        try:
            cap.save(args.out)
        except OSError as exc:
            raise CaptureFailed(f"cannot write {args.out}: {exc.strerror}") from None
    except CaptureFailed as exc:
        sys.stderr.write(f"ksmlab capture: {exc}\n")
        return 2
    s = cap.stats()
    mib = s["pages"] * PAGE_SIZE / (1 << 20)
    pct = (lambda n: 100.0 * n / s["present"]) if s["present"] else (lambda n: 0.0)
    sys.stdout.write(
        f"{args.out}: {s['processes']} processes, {s['mappings']} mappings, {mib:,.0f} MiB "
        f"mapped, {s['present']} pages present ({pct(s['zero']):.1f}% zero, "
        f"{pct(s['duplicate']):.1f}% duplicate, {pct(s['unique']):.1f}% unique), "
        f"{s['ksm_pages']} KSM pages, {s['changing']} changing; {s['file_mappings']} file "
        f"mappings ({s['cow']} copy-on-write pages read, {s['file_pages']} page-cache pages "
        f"not read), in {elapsed:.2f}s"
        + ("; classes in memcmp order" if cap.class_order == "memcmp" else "")
        + "\n"
    )
    return 0
