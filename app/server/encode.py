"""The wire format of ``docs/protocol.md``: snapshots and compact deltas of a :class:`sim.Kernel`.

:class:`Encoder` keeps a mirror of what its viewers last received (page columns, frame
columns, counters, stable nodes...) and computes each step's :class:`~app.server.messages.Delta`
by comparing the kernel with the mirror. Candidates come from the kernel's change record and
from a chunked comparison of the columns (C-speed slice compares), so the cost of a delta is
proportional to what changed plus a small scan, never a Python loop over every page.

Only the encoding lives here (b64 columns, varint records, deltas, message assembly); what
the messages say about the kernel (page and frame kinds, stable-node rows, the step's
description) comes from :mod:`sim.snapshot`.
"""

from __future__ import annotations

import base64
import struct
import sys
from array import array
from typing import Any

from sim import Kernel
from sim.changes import ChangeLog, split_key
from sim.ksm_files import table as ksm_files_table
from sim.mm import Vma
from sim.snapshot import (
    KIND_NAMES,
    all_ksm_stats,
    event_paths,
    frame_kind,
    frame_kinds,
    kinds_table,
    page_kind,
    page_kinds,
    signature,
    stable_node_rows,
    structure,
)

from .messages import (
    Delta,
    FrameRecords,
    FramesView,
    PageRecords,
    ProcView,
    Snapshot,
    StableNodeChanges,
    StableNodeRow,
    VmaView,
)

CHUNK = 256
#: the same in every snapshot: the KSM-files table and the page and frame kinds
KSM_FILES = ksm_files_table()
KIND_TABLE = kinds_table()

if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
    raise ImportError("app.server.encode assumes a little-endian host")


def b64(data: bytes | bytearray) -> str:
    return base64.b64encode(data).decode("ascii")


def uvarint(out: bytearray, n: int) -> None:
    """Unsigned LEB128."""
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def zigzag(n: int) -> int:
    return n << 1 if n >= 0 else ((-n) << 1) - 1


def runs(flags: bytearray) -> list[tuple[int, int]]:
    """Half-open runs of non-zero bytes."""
    out: list[tuple[int, int]] = []
    i, n = 0, len(flags)
    while i < n:
        lo = flags.find(1, i)
        if lo < 0:
            break
        hi = flags.find(0, lo)
        hi = n if hi < 0 else hi
        out.append((lo, hi))
        i = hi
    return out


def _diff(old: Any, new: Any, out: set[int], base: int = 0) -> None:
    """Indexes where two equally long sequences differ, comparing CHUNK items at a time."""
    n = len(new)
    for lo in range(0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        if old[lo:hi] != new[lo:hi]:
            for i in range(lo, hi):
                if old[i] != new[i]:
                    out.add(base + i)


class _VmaMirror:
    __slots__ = ("pfn", "pte", "state", "skipped", "kind", "mergeable")

    def __init__(self, k: Kernel, v: Vma):
        self.pfn = array("i", v.pfn)
        self.pte = bytearray(v.pte)
        self.state = bytearray(v.it_state)
        self.skipped = bytearray(v.it_skipped)
        self.kind = page_kinds(k, v)
        self.mergeable = runs(v.mergeable)


class Encoder:
    """Builds snapshots and deltas for one session (see the module docstring)."""

    def __init__(self, session: str):
        self.session = session
        self._vmas: dict[int, _VmaMirror] = {}
        self._f_map = array("i")
        self._f_node = array("i")
        self._sig: tuple[Any, ...] = ()
        self._global: dict[str, int | None] = {}
        self._stats: dict[str, dict[str, int | bool | None]] = {}
        self._knobs: dict[str, Any] = {}
        self._ksmd: dict[str, Any] = {}
        self._nodes: dict[int, StableNodeRow] = {}
        self._unstable = 0

    # ----------------------------------------------------------------- snapshot
    def snapshot(self, k: Kernel, meta: dict[str, Any]) -> Snapshot:
        """The whole observable state; also resets the mirror to it."""
        self._sync(k)
        procs = []
        for name, mm in k.procs.items():
            vmas = []
            for v in mm.vmas.values():
                m = self._vmas[v.uid]
                vmas.append(
                    VmaView(
                        name=v.name,
                        uid=v.uid,
                        start=v.start,
                        npages=v.npages,
                        mergeable=m.mergeable,
                        pfn=b64(m.pfn.tobytes()),
                        pte=b64(m.pte),
                        kind=b64(m.kind),
                        item=b64(m.state),
                    )
                )
            procs.append(
                ProcView(
                    name=name,
                    pid=mm.pid,
                    registered=mm.registered,
                    merge_any=mm.merge_any,
                    ksm_stat=self._stats[name],
                    vmas=vmas,
                )
            )
        nframes = len(k.f_map)
        fkinds = frame_kinds(k)
        return Snapshot(
            session=self.session,
            **meta,
            kernel=k.version,
            knobs=dict(self._knobs),
            global_=dict(self._global),
            procs=procs,
            frames=FramesView(count=nframes, kind=b64(fkinds), mapcount=b64(k.f_map.tobytes())),
            stable_nodes=list(self._nodes.values()),
            ksmd=self._ksmd,
            unstable_tree=self._unstable,
            kinds=list(KIND_NAMES),
            paths=event_paths(k),
            ksm_files=KSM_FILES,
            kind_table=KIND_TABLE,
        )

    def _sync(self, k: Kernel) -> None:
        self._vmas = {v.uid: _VmaMirror(k, v) for mm in k.procs.values() for v in mm.vmas.values()}
        self._f_map = array("i", k.f_map)
        self._f_node = array("i", k.f_node)
        self._sig = signature(k)
        self._global = k.global_counters()
        self._stats = all_ksm_stats(k)
        self._knobs = dict(k.knobs)
        self._ksmd = structure(k)["ksmd"]
        self._nodes = stable_node_rows(k)
        self._unstable = len(k.unstable)

    # -------------------------------------------------------------------- delta
    def delta(self, k: Kernel, log: ChangeLog | None, meta: dict[str, Any]) -> Delta | None:
        """What changed since the mirror; None when only a snapshot can say it."""
        if signature(k) != self._sig:
            return None
        frames = self._frame_changes(k)
        retyped = {
            pfn
            for pfn in frames
            if pfn < len(self._f_node) and (self._f_node[pfn] >= 0) != (k.f_node[pfn] >= 0)
        }
        pages, mergeable = self._page_changes(k, log, retyped)
        frame_rec = self._frame_records(k, frames)
        glob = k.global_counters()
        stats = all_ksm_stats(k)
        stat_diff = {}
        for name, stat in stats.items():
            old = self._stats.get(name, {})
            changed = {f: v for f, v in stat.items() if old.get(f) != v}
            if changed:
                stat_diff[name] = changed
        knobs = {kn: v for kn, v in k.knobs.items() if self._knobs.get(kn) != v}
        ksmd = structure(k)["ksmd"]
        nodes = stable_node_rows(k)
        upsert = [row for nid, row in nodes.items() if self._nodes.get(nid) != row]
        removed = sorted(self._nodes.keys() - nodes.keys())
        delta = Delta(
            session=self.session,
            **meta,
            global_={f: v for f, v in glob.items() if self._global.get(f) != v},
            ksm_stat=stat_diff,
            pages=pages,
            mergeable=mergeable,
            frames=frame_rec,
            stable_nodes=StableNodeChanges(upsert=upsert, removed=removed),
            ksmd=None if ksmd == self._ksmd else ksmd,
            unstable_tree=len(k.unstable),
            knobs=knobs,
        )
        self._global, self._stats, self._ksmd, self._nodes = glob, stats, ksmd, nodes
        self._knobs.update(knobs)
        self._unstable = len(k.unstable)
        return delta

    def _frame_changes(self, k: Kernel) -> list[int]:
        changed: set[int] = set()
        old_n = len(self._f_map)
        new_n = len(k.f_map)
        n = min(old_n, new_n)
        _diff(self._f_map[:n], k.f_map[:n], changed)
        _diff(self._f_node[:n], k.f_node[:n], changed)
        changed.update(range(n, new_n))
        return sorted(changed)

    def _frame_records(self, k: Kernel, frames: list[int]) -> FrameRecords:
        out = bytearray()
        prev = -1
        for pfn in frames:
            uvarint(out, pfn - prev - 1)
            prev = pfn
            out.append(frame_kind(k, pfn))
            uvarint(out, max(0, k.f_map[pfn]))
        self._f_map = array("i", k.f_map) if len(k.f_map) != len(self._f_map) else self._f_map
        self._f_node = array("i", k.f_node) if len(k.f_node) != len(self._f_node) else self._f_node
        for pfn in frames:
            self._f_map[pfn] = k.f_map[pfn]
            self._f_node[pfn] = k.f_node[pfn]
        return FrameRecords(count=len(k.f_map), n=len(frames), d=b64(out))

    def _page_changes(
        self, k: Kernel, log: ChangeLog | None, retyped: set[int]
    ) -> tuple[list[PageRecords], dict[str, list[tuple[int, int]]]]:
        logged: dict[int, set[int]] = {}
        if log is not None:
            for key in log.pages:
                uid, page = split_key(key)
                logged.setdefault(uid, set()).add(page)
        retyped_b = [struct.pack("<i", pfn) for pfn in retyped]
        out: list[PageRecords] = []
        mergeable: dict[str, list[tuple[int, int]]] = {}
        for mm in k.procs.values():
            for v in mm.vmas.values():
                m = self._vmas[v.uid]
                cand = logged.get(v.uid, set())
                _diff(m.pfn, v.pfn, cand)
                _diff(m.pte, v.pte, cand)
                _diff(m.state, v.it_state, cand)
                _diff(m.skipped, v.it_skipped, cand)
                if retyped_b:
                    raw = v.pfn.tobytes()
                    for pat in retyped_b:
                        _find_all(raw, pat, cand)
                rec = self._records(k, v, m, cand)
                if rec is not None:
                    out.append(rec)
                mr = runs(v.mergeable)
                if mr != m.mergeable:
                    m.mergeable = mr
                    mergeable[str(v.uid)] = mr
        return out, mergeable

    @staticmethod
    def _records(k: Kernel, v: Vma, m: _VmaMirror, cand: set[int]) -> PageRecords | None:
        out = bytearray()
        prev_i, prev_pfn, n = -1, 0, 0
        for i in sorted(cand):
            if i >= v.npages:
                continue
            pfn, pte, st = v.pfn[i], v.pte[i], v.it_state[i]
            kind = page_kind(k, v, i)
            skipped = v.it_skipped[i]
            if pfn == m.pfn[i] and pte == m.pte[i] and st == m.state[i] and kind == m.kind[i]:
                m.skipped[i] = skipped
                continue
            m.pfn[i], m.pte[i], m.state[i], m.kind[i], m.skipped[i] = pfn, pte, st, kind, skipped
            uvarint(out, i - prev_i - 1)
            uvarint(out, zigzag(pfn - prev_pfn))
            out.append(pte | (st << 4))
            out.append(kind)
            prev_i, prev_pfn = i, pfn
            n += 1
        return PageRecords(uid=v.uid, n=n, d=b64(out)) if n else None


def _find_all(raw: bytes, pat: bytes, out: set[int]) -> None:
    i = raw.find(pat)
    while i >= 0:
        if i % 4 == 0:
            out.add(i // 4)
        i = raw.find(pat, i + 1)
