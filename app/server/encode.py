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
from dataclasses import dataclass, field
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

from . import overview as ov
from .messages import (
    Delta,
    DetailView,
    FrameRecords,
    FramesView,
    OverviewDelta,
    OverviewLane,
    OverviewView,
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


BIG_CHUNK = 1 << 16
#: a step whose change log names more than 1/BULK of the pages is compared in bulk
BULK = 16


def _diff(old: Any, new: Any, out: set[int], base: int = 0) -> None:
    """Indexes where two equally long sequences differ: a whole compare first (memcmp),
    then BIG_CHUNK items at a time, then CHUNK items at a time."""
    n = len(new)
    if old == new:
        return
    if n > BIG_CHUNK and base == 0:
        for lo in range(0, n, BIG_CHUNK):
            hi = min(lo + BIG_CHUNK, n)
            a, b = old[lo:hi], new[lo:hi]
            if a != b:
                _diff(a, b, out, lo)
        return
    for lo in range(0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        a, b = old[lo:hi], new[lo:hi]
        if a != b:
            at = base + lo
            out.update(at + j for j, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)


def _unlogged(old: Any, new: Any, logged: set[int], out: set[int]) -> None:
    """Every index where two columns differ, given the indexes the change log named: the
    span of the logged indexes is copied into ``old`` for one whole compare (memcmp), then
    put back; when nothing outside the span changed (the log is complete) only the span is
    compared, chunk by chunk, else the whole column."""
    if len(old) != len(new):
        _diff(old, new, out)
        return
    if not logged:
        _diff(old, new, out)
        return
    lo, hi = min(logged), max(logged) + 1
    hi = min(hi, len(old))
    saved = old[lo:hi]
    old[lo:hi] = new[lo:hi]
    try:
        outside_equal = old == new
    finally:
        old[lo:hi] = saved
    if outside_equal:
        _diff(old[lo:hi], new[lo:hi], out, lo)
    else:
        _diff(old, new, out)


class _VmaMirror:
    __slots__ = ("pfn", "pte", "state", "skipped", "kind", "mergeable")

    def __init__(self, k: Kernel, v: Vma):
        self.pfn = array("i", v.pfn)
        self.pte = bytearray(v.pte)
        self.state = bytearray(v.it_state)
        self.skipped = bytearray(v.it_skipped)
        self.kind = page_kinds(k, v)
        self.mergeable = runs(v.mergeable)


PageRow = tuple[int, int, int, int, int]
"""``(index, pfn, pte, rmap_item state, kind)`` of a changed page."""


@dataclass
class _Bulk:
    """A mapping's columns before and after a step that touched much of it; the changed
    rows of a page range are found when a viewport asks for them (C-speed chunk compares)."""

    old: tuple[Any, Any, Any, Any]
    new: tuple[Any, Any, Any, Any]

    def rows(self, spans: list[tuple[int, int]]) -> list[PageRow]:
        changed: set[int] = set()
        for lo, hi in spans:
            for a, b in zip(self.old, self.new, strict=True):
                _diff(a[lo:hi], b[lo:hi], changed, lo)
        pfn, pte, st, kind = self.new
        return [(i, pfn[i], pte[i], st[i], kind[i]) for i in sorted(changed)]


@dataclass
class StepChanges:
    """What one step changed, before it is encoded for a viewport (:meth:`Encoder.encode`)."""

    global_: dict[str, int | None]
    ksm_stat: dict[str, dict[str, int | bool | None]]
    pages: dict[int, list[PageRow]]
    #: mappings compared in bulk: their rows are found per viewport (:class:`_Bulk`)
    bulk: dict[int, _Bulk]
    #: page ranges ``[lo, hi)`` that hold every page whose kind changed, by mapping
    kinds: dict[int, list[tuple[int, int]]]
    mergeable: dict[str, list[tuple[int, int]]]
    frames: list[tuple[int, int, int]]
    ksm_frames: set[int]
    nframes: int
    stable_nodes: StableNodeChanges
    ksmd: dict[str, Any] | None
    unstable_tree: int
    knobs: dict[str, Any]
    cache: dict[Any, Delta] = field(default_factory=dict)


class Encoder:
    """Builds snapshots and deltas for one session (see the module docstring)."""

    def __init__(self, session: str):
        self.session = session
        self._vmas: dict[int, _VmaMirror] = {}
        self._order: list[int] = []
        self._f_map = array("i")
        self._f_node = array("i")
        self._sig: tuple[Any, ...] = ()
        self._global: dict[str, int | None] = {}
        self._stats: dict[str, dict[str, int | bool | None]] = {}
        self._knobs: dict[str, Any] = {}
        self._ksmd: dict[str, Any] = {}
        self._nodes: dict[int, StableNodeRow] = {}
        self._unstable = 0
        #: the session version the mirror equals (set by the session; -1: unknown)
        self.version = -1
        self._rank: dict[int, int] = {}

    # ------------------------------------------------------------------- sizes
    def pages(self) -> int:
        return sum(len(m.kind) for m in self._vmas.values())

    def lane_sizes(self) -> dict[int, int]:
        return {uid: len(m.kind) for uid, m in self._vmas.items()}

    def kinds_of(self, uid: int) -> bytearray | None:
        """The mirror's page kinds of a mapping (what the viewers were sent)."""
        m = self._vmas.get(uid)
        return None if m is None else m.kind

    # ----------------------------------------------------------------- snapshot
    def snapshot(
        self,
        k: Kernel,
        meta: dict[str, Any],
        viewport: ov.Viewport | None = None,
        sync: bool = True,
    ) -> Snapshot:
        """The whole observable state; also resets the mirror to it (``sync``; False when the
        mirror is known to equal the kernel already). With a ``viewport`` (a session of more
        than :data:`~app.server.overview.DETAIL_MAX_PAGES` pages) the per-page columns are
        left empty and the ``overview`` carries per-bucket counts and the viewport's detail."""
        if sync or not self._vmas and k.procs:
            self._sync(k)
        big = viewport is not None
        procs = []
        lanes: list[OverviewLane] = []
        detail: list[DetailView] = []
        for name, mm in k.procs.items():
            vmas = []
            for v in mm.vmas.values():
                m = self._vmas[v.uid]
                if big:
                    assert viewport is not None
                    nb, rec = ov.lane_records(m.kind, viewport.bucket)
                    lanes.append(OverviewLane(uid=v.uid, n=nb, d=b64(rec)))
                    for lo, hi in viewport.detail_of(v.uid):
                        hi = min(hi, len(m.kind))
                        if lo < hi:
                            detail.append(
                                DetailView(
                                    uid=v.uid,
                                    lo=lo,
                                    hi=hi,
                                    pfn=b64(m.pfn[lo:hi].tobytes()),
                                    pte=b64(m.pte[lo:hi]),
                                    kind=b64(m.kind[lo:hi]),
                                    item=b64(m.state[lo:hi]),
                                )
                            )
                vmas.append(
                    VmaView(
                        name=v.name,
                        uid=v.uid,
                        start=v.start,
                        npages=v.npages,
                        mergeable=m.mergeable,
                        pfn="" if big else b64(m.pfn.tobytes()),
                        pte="" if big else b64(m.pte),
                        kind="" if big else b64(m.kind),
                        item="" if big else b64(m.state),
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
        if big:
            frames = FramesView(count=nframes, kind="", mapcount="")
            over = OverviewView(
                bucket=viewport.bucket if viewport else 1,
                lanes=lanes,
                detail=detail,
                ksm_frames=self._ksm_frame_records(k),
            )
        else:
            fkinds = frame_kinds(k)
            frames = FramesView(count=nframes, kind=b64(fkinds), mapcount=b64(k.f_map.tobytes()))
            over = None
        return Snapshot(
            session=self.session,
            **meta,
            kernel=k.version,
            knobs=dict(self._knobs),
            global_=dict(self._global),
            procs=procs,
            frames=frames,
            stable_nodes=list(self._nodes.values()),
            ksmd=self._ksmd,
            unstable_tree=self._unstable,
            kinds=list(KIND_NAMES),
            paths=event_paths(k),
            ksm_files=KSM_FILES,
            kind_table=KIND_TABLE,
            overview=over,
        )

    def _ksm_frame_records(self, k: Kernel) -> FrameRecords:
        """The zero page and every KSM page's frame (what a detail view shades KSM cells by)."""
        pfns = sorted({0, *(n.pfn for n in k.nodes.values() if n.pfn > 0)})
        pfns = [p for p in pfns if p < len(k.f_map)]
        rows = [(p, frame_kind(k, p), max(0, k.f_map[p])) for p in pfns]
        return FrameRecords(count=len(k.f_map), n=len(rows), d=b64(_frame_bytes(rows)))

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
        """What changed since the mirror, page by page; None when only a snapshot can say it."""
        ch = self.changes(k, log)
        return None if ch is None else self.encode(ch, meta, None)

    def changes(self, k: Kernel, log: ChangeLog | None) -> StepChanges | None:
        """What changed since the mirror (the mirror moves to the kernel's state); None when
        only a snapshot can say it."""
        if signature(k) != self._sig:
            return None
        frames = self._frame_changes(k, log)
        retyped = {
            pfn
            for pfn in frames
            if pfn < len(self._f_node) and (self._f_node[pfn] >= 0) != (k.f_node[pfn] >= 0)
        }
        pages, bulk, kinds, mergeable = self._page_changes(k, log, retyped)
        ksm_frames = {
            pfn
            for pfn in frames
            if pfn == 0 or pfn in retyped or (pfn < len(k.f_node) and k.f_node[pfn] >= 0)
        }
        frame_rows = self._frame_rows(k, frames)
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
        ch = StepChanges(
            global_={f: v for f, v in glob.items() if self._global.get(f) != v},
            ksm_stat=stat_diff,
            pages=pages,
            bulk=bulk,
            kinds=kinds,
            mergeable=mergeable,
            frames=frame_rows,
            ksm_frames=ksm_frames,
            nframes=len(k.f_map),
            stable_nodes=StableNodeChanges(upsert=upsert, removed=removed),
            ksmd=None if ksmd == self._ksmd else ksmd,
            unstable_tree=len(k.unstable),
            knobs=knobs,
        )
        self._global, self._stats, self._ksmd, self._nodes = glob, stats, ksmd, nodes
        self._knobs.update(knobs)
        self._unstable = len(k.unstable)
        return ch

    def encode(self, ch: StepChanges, meta: dict[str, Any], viewport: ov.Viewport | None) -> Delta:
        """The delta of a step's changes for one viewport (None: every page, no overview)."""
        key = viewport
        hit = ch.cache.get(key)
        if hit is not None:
            return hit
        out: list[PageRecords] = []
        sent_pfns: set[int] = set()
        for uid, rows in ch.pages.items():
            if viewport is not None:
                spans = viewport.detail_of(uid)
                rows = [r for r in rows if any(lo <= r[0] < hi for lo, hi in spans)]
                sent_pfns.update(r[1] for r in rows)
            rec = _page_bytes(rows)
            if rows:
                out.append(PageRecords(uid=uid, n=len(rows), d=b64(rec)))
        for uid, bk in ch.bulk.items():
            n = len(bk.new[0])
            spans = [(0, n)] if viewport is None else viewport.detail_of(uid)
            rows = bk.rows(spans) if spans else []
            if viewport is not None:
                sent_pfns.update(r[1] for r in rows)
            if rows:
                out.append(PageRecords(uid=uid, n=len(rows), d=b64(_page_bytes(rows))))
        out.sort(key=lambda r: self._rank.get(r.uid, 0))
        if viewport is None:
            frame_rows = ch.frames
            over = None
        else:
            frame_rows = [r for r in ch.frames if r[0] in ch.ksm_frames or r[0] in sent_pfns]
            lanes = []
            for uid, changed in ch.kinds.items():
                kinds = self.kinds_of(uid)
                if kinds is None or not changed:
                    continue
                n, brec = ov.changed_records(kinds, viewport.bucket, changed)
                if n:
                    lanes.append(OverviewLane(uid=uid, n=n, d=b64(brec)))
            over = OverviewDelta(bucket=viewport.bucket, lanes=lanes)
        delta = Delta(
            session=self.session,
            **meta,
            global_=ch.global_,
            ksm_stat=ch.ksm_stat,
            pages=out,
            mergeable=ch.mergeable,
            frames=FrameRecords(
                count=ch.nframes, n=len(frame_rows), d=b64(_frame_bytes(frame_rows))
            ),
            stable_nodes=ch.stable_nodes,
            ksmd=ch.ksmd,
            unstable_tree=ch.unstable_tree,
            knobs=ch.knobs,
            overview=over,
        )
        ch.cache[key] = delta
        return delta

    def _frame_changes(self, k: Kernel, log: ChangeLog | None) -> list[int]:
        changed: set[int] = set()
        old_n = len(self._f_map)
        new_n = len(k.f_map)
        n = min(old_n, new_n)
        logged = {p for p in log.frames if p < n} if log is not None else set()
        if old_n == new_n:
            _unlogged(self._f_map, k.f_map, logged, changed)
            _unlogged(self._f_node, k.f_node, logged, changed)
        else:
            _diff(self._f_map[:n], k.f_map[:n], changed)
            _diff(self._f_node[:n], k.f_node[:n], changed)
        changed.update(range(n, new_n))
        return sorted(changed)

    def _frame_rows(self, k: Kernel, frames: list[int]) -> list[tuple[int, int, int]]:
        rows = [(pfn, frame_kind(k, pfn), max(0, k.f_map[pfn])) for pfn in frames]
        self._f_map = array("i", k.f_map) if len(k.f_map) != len(self._f_map) else self._f_map
        self._f_node = array("i", k.f_node) if len(k.f_node) != len(self._f_node) else self._f_node
        for pfn in frames:
            self._f_map[pfn] = k.f_map[pfn]
            self._f_node[pfn] = k.f_node[pfn]
        return rows

    def _page_changes(
        self, k: Kernel, log: ChangeLog | None, retyped: set[int]
    ) -> tuple[
        dict[int, list[PageRow]],
        dict[int, _Bulk],
        dict[int, list[tuple[int, int]]],
        dict[str, list[tuple[int, int]]],
    ]:
        logged: dict[int, set[int]] = {}
        total = sum(len(m.kind) for m in self._vmas.values())
        # a step that touched many pages (a whole pass) is compared column by column
        bulk = log is None or len(log.pages) * BULK > total
        if not bulk and log is not None:
            for key in log.pages:
                uid, page = split_key(key)
                logged.setdefault(uid, set()).add(page)
        retyped_b = [struct.pack("<i", pfn) for pfn in retyped]
        out: dict[int, list[PageRow]] = {}
        bulks: dict[int, _Bulk] = {}
        kinds: dict[int, list[tuple[int, int]]] = {}
        mergeable: dict[str, list[tuple[int, int]]] = {}
        self._rank = {}
        for mm in k.procs.values():
            for v in mm.vmas.values():
                self._rank[v.uid] = len(self._rank)
                m = self._vmas[v.uid]
                if bulk:
                    bulks[v.uid], kr = self._bulk(k, v, m)
                    if kr:
                        kinds[v.uid] = kr
                    mr = runs(v.mergeable)
                    if mr != m.mergeable:
                        m.mergeable = mr
                        mergeable[str(v.uid)] = mr
                    continue
                lg = logged.get(v.uid, set())
                cand: set[int] = set()
                _unlogged(m.pfn, v.pfn, lg, cand)
                _unlogged(m.pte, v.pte, lg, cand)
                _unlogged(m.state, v.it_state, lg, cand)
                _unlogged(m.skipped, v.it_skipped, lg, cand)
                if retyped_b:
                    raw = v.pfn.tobytes()
                    for pat in retyped_b:
                        _find_all(raw, pat, cand)
                rows, kc = self._rows(k, v, m, cand)
                if rows:
                    out[v.uid] = rows
                if kc:
                    kinds[v.uid] = [(i, i + 1) for i in kc]
                mr = runs(v.mergeable)
                if mr != m.mergeable:
                    m.mergeable = mr
                    mergeable[str(v.uid)] = mr
        return out, bulks, kinds, mergeable

    @staticmethod
    def _bulk(k: Kernel, v: Vma, m: _VmaMirror) -> tuple[_Bulk, list[tuple[int, int]]]:
        """A step that touched a large part of the mapping: the kinds of every page at once
        (:func:`sim.snapshot.page_kinds`), the mirror replaced by copies; which pages changed
        is found per viewport (:class:`_Bulk`); the chunks whose kinds changed are returned."""
        kind = page_kinds(k, v)
        old = (m.pfn, m.pte, m.state, m.kind)
        kr = _changed_chunks(m.kind, kind)
        m.pfn = array("i", v.pfn)
        m.pte = bytearray(v.pte)
        m.state = bytearray(v.it_state)
        m.skipped = bytearray(v.it_skipped)
        m.kind = kind
        return _Bulk(old, (m.pfn, m.pte, m.state, m.kind)), kr

    @staticmethod
    def _rows(k: Kernel, v: Vma, m: _VmaMirror, cand: set[int]) -> tuple[list[PageRow], list[int]]:
        rows: list[PageRow] = []
        kinds: list[int] = []
        for i in sorted(cand):
            if i >= v.npages:
                continue
            pfn, pte, st = v.pfn[i], v.pte[i], v.it_state[i]
            kind = page_kind(k, v, i)
            skipped = v.it_skipped[i]
            if pfn == m.pfn[i] and pte == m.pte[i] and st == m.state[i] and kind == m.kind[i]:
                m.skipped[i] = skipped
                continue
            if kind != m.kind[i]:
                kinds.append(i)
            m.pfn[i], m.pte[i], m.state[i], m.kind[i], m.skipped[i] = pfn, pte, st, kind, skipped
            rows.append((i, pfn, pte, st, kind))
        return rows, kinds


def _changed_chunks(old: bytearray, new: bytearray) -> list[tuple[int, int]]:
    """The CHUNK-aligned ranges where two byte columns differ (memcmp per chunk)."""
    out: list[tuple[int, int]] = []
    if old == new:
        return out
    n = len(new)
    for lo in range(0, n, BIG_CHUNK):
        hi = min(lo + BIG_CHUNK, n)
        if old[lo:hi] == new[lo:hi]:
            continue
        for a in range(lo, hi, CHUNK):
            b = min(a + CHUNK, hi)
            if old[a:b] != new[a:b]:
                if out and out[-1][1] == a:
                    out[-1] = (out[-1][0], b)
                else:
                    out.append((a, b))
    return out


def _page_bytes(rows: list[PageRow]) -> bytearray:
    out = bytearray()
    prev_i, prev_pfn = -1, 0
    for i, pfn, pte, st, kind in rows:
        uvarint(out, i - prev_i - 1)
        uvarint(out, zigzag(pfn - prev_pfn))
        out.append(pte | (st << 4))
        out.append(kind)
        prev_i, prev_pfn = i, pfn
    return out


def _frame_bytes(rows: list[tuple[int, int, int]]) -> bytearray:
    out = bytearray()
    prev = -1
    for pfn, kind, mapcount in rows:
        uvarint(out, pfn - prev - 1)
        prev = pfn
        out.append(kind)
        uvarint(out, mapcount)
    return out


def _find_all(raw: bytes, pat: bytes, out: set[int]) -> None:
    i = raw.find(pat)
    while i >= 0:
        if i % 4 == 0:
            out.add(i // 4)
        i = raw.find(pat, i + 1)
