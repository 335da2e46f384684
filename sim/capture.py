"""Captures of real memory (``ksm-capture/1``): the file format, its loader and its figures.

A capture is what ``ksmlab capture`` (:mod:`app.kernel.capture`) saw of some processes'
private memory (anonymous mappings and, since version 2, private file mappings, whose
copy-on-write pages are anonymous): per process its mappings, and per page whether it is
present, its
*content class*, its KSM state at capture time, whether it was part of a transparent huge
page and, when several snapshots were taken, how many times its content changed over the
period. No page content and no hash of one is stored: the reader fingerprints each page
with a keyed 64-bit hash whose key lives only in its memory, and the classes are then
renumbered densely in the order of the fingerprints' BLAKE2b keyed with a random per-capture
salt that is not stored either (:class:`ClassTable`), so that

- two pages of one capture with equal bytes have the same class (what KSM merges);
- class 0 is the zero page's content (every byte zero), in every capture;
- the other ids are a permutation chosen by the salt: nothing in the file can be compared
  with another capture or reversed to a page's bytes (``docs/whatif.md``, "Privacy").

A capture taken with ``ksmlab capture --memcmp-order`` numbers its classes in the order of
their bytes instead (``class_order: "memcmp"`` in the header): class ``a`` < class ``b``
when ``memcmp`` puts ``a``'s page first, the order of the kernel's stable and unstable
trees, which the simulator then follows (:func:`sim.fromcapture.apply_order`). That order
says a little about the bytes (which page sorts before which), so it is opt-in.

The simulator's content ids can therefore be the class ids (:mod:`sim.fromcapture`).

File layout (all integers little-endian)::

    b"KSMCAPTURE\\n"        11 bytes, the magic
    uint32                  length H of the header
    H bytes                 the header: UTF-8 JSON (format, version, processes, columns...)
    columns                 one after the other, as the header's "columns" list says

Each column holds one value per captured page, pages in order (processes, then their
mappings, then pages by address): ``flags`` (uint8, :data:`PRESENT`, :data:`THP`,
:data:`SWAPPED`, the KSM state in bits 3-4, :data:`KSM_PLAIN`..., and :data:`FILE`),
``class`` (uint32) and, with several snapshots, ``changes`` (uint16, saturating). A column
is zlib-compressed when its header entry says ``"zlib": true``. Standard library only.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
import zlib
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SimError

FORMAT = "ksm-capture/1"
#: the version written when a capture has a file-backed mapping (else 1, what every reader
#: of ``ksm-capture/1`` reads: an anonymous-only capture is byte for byte what it was)
VERSION = 2
#: versions this loader reads (1: anonymous mappings only; 2: adds file-backed mappings,
#: the mapping field ``file`` and the page flag :data:`FILE`)
VERSIONS = (1, 2)
MAGIC = b"KSMCAPTURE\n"
#: how class ids are ordered: by a per-capture salt (the default), or as the pages' bytes
CLASS_ORDERS = ("salted", "memcmp")

#: per-page flag bits
PRESENT = 1
THP = 2
SWAPPED = 4
#: a page-cache (file) page mapped in a private file mapping: present in the page table but
#: not anonymous, so ksmd walks it and skips it (no rmap_item, never merged). Never read:
#: :data:`PRESENT` is clear and its class is 0 (the simulator sees it as not present).
FILE = 32
#: the flag bits a loader accepts
FLAG_BITS = PRESENT | THP | SWAPPED | (3 << 3) | FILE
KSM_SHIFT = 3
KSM_MASK = 3 << KSM_SHIFT
#: KSM state at capture time (bits 3-4 of the flags)
KSM_PLAIN = 0  # an ordinary page (or not present), or unknown when the reader had no root
KSM_PAGE = 1  # a KSM page
KSM_ZERO_PFN = 2  # mapped to the kernel's zero page (a KSM zero page or a read fault)
KSM_AMBIGUOUS = 3  # a KSM page or a page a merge left behind (no interface tells which)
KSM_STATE_NAMES = ("plain", "ksm", "zero_pfn", "ambiguous")

#: the class of the zero page's content
ZERO_CLASS = 0
MAX_CHANGES = 0xFFFF

#: bounds of a file a loader accepts (a capture is read from uploads too)
MAX_HEADER_BYTES = 16 << 20
MAX_PAGES = 1 << 28
MAX_PROCESSES = 100_000
MAX_MAPPINGS = 1_000_000

#: the columns, their array type codes and whether they are required
COLUMNS = {"flags": "B", "class": "I", "changes": "H"}


class CaptureError(SimError):
    """A capture file is malformed or cannot be read; the message says where."""

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        self.message = message
        super().__init__(f"field '{field}': {message}" if field else message)


@dataclass
class CapturedMapping:
    """One private mapping (one VMA of ``/proc/PID/smaps``): anonymous, or file-backed."""

    start: int  # virtual address
    pages: int
    name: str = ""  # "" anonymous, "[heap]", "[stack]", "[anon:...]", or the file's path
    mergeable: bool = False  # VmFlags ``mg`` at capture time
    #: index of its first page in the capture's columns (set by the capture)
    first: int = 0
    #: a private file mapping (version 2): its present pages are copy-on-write anonymous
    #: pages (read and classed) or page-cache pages (flag :data:`FILE`, not read)
    file: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "start": self.start,
            "pages": self.pages,
            "name": self.name,
            "mergeable": self.mergeable,
        }
        if self.file:
            out["file"] = True
        return out


@dataclass
class CapturedProcess:
    pid: int
    comm: str
    exe: str = ""  # the first word of its cmdline
    cgroup: str = ""  # its cgroup v2 path ("0::" line of /proc/PID/cgroup)
    merge_any: bool | None = None  # ksm_stat ksm_merge_any (PR_SET_MEMORY_MERGE)
    #: ``/proc/PID/ksm_stat`` at capture time (None: not read)
    ksm_stat: dict[str, int | bool] | None = None
    mappings: list[CapturedMapping] = field(default_factory=list)

    @property
    def pages(self) -> int:
        return sum(m.pages for m in self.mappings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "comm": self.comm,
            "exe": self.exe,
            "cgroup": self.cgroup,
            "merge_any": self.merge_any,
            "ksm_stat": self.ksm_stat,
            "mappings": [m.to_dict() for m in self.mappings],
        }


@dataclass
class Capture:
    """A capture in memory: processes, their mappings, and the page columns.

    ``flags``, ``classes`` and ``changes`` have one entry per page (``changes`` is empty
    with one snapshot). ``classes`` is the number of content classes (class ids are
    ``0 .. classes-1``, 0 the zero page's content).
    """

    processes: list[CapturedProcess]
    flags: array[int]
    cls: array[int]
    changes: array[int] = field(default_factory=lambda: array("H"))
    classes: int = 1
    snapshots: int = 1
    period_s: float = 0.0
    created: str = ""
    host: dict[str, Any] = field(default_factory=dict)
    #: how the KSM state was read ("KPF_KSM", "dirty rule ...", "unknown: ...")
    ksm_rule: str = ""
    notes: list[str] = field(default_factory=list)
    #: :data:`CLASS_ORDERS`: "memcmp" when class ids follow the pages' memcmp order
    class_order: str = "salted"

    def __post_init__(self) -> None:
        self.index()

    # ------------------------------------------------------------------ layout
    def index(self) -> None:
        """Set each mapping's ``first`` page index (processes, then mappings, in order)."""
        first = 0
        for proc in self.processes:
            for m in proc.mappings:
                m.first = first
                first += m.pages

    @property
    def pages(self) -> int:
        return len(self.flags)

    def mappings(self) -> Iterator[tuple[CapturedProcess, CapturedMapping]]:
        for proc in self.processes:
            for m in proc.mappings:
                yield proc, m

    def ksm_state(self, page: int) -> int:
        return (self.flags[page] & KSM_MASK) >> KSM_SHIFT

    # ----------------------------------------------------------------- figures
    def stats(self) -> dict[str, Any]:
        """:meth:`compute_stats`, computed once (a capture is not changed after loading)."""
        cached: dict[str, Any] | None = getattr(self, "_stats", None)
        if cached is None:
            cached = self.compute_stats()
            self._stats = cached
        return dict(cached)

    def compute_stats(self) -> dict[str, Any]:
        """Counts of the capture: pages, present, zero, duplicate, unique, KSM state, THP,
        pages whose content changed; ``saving_pages``: what KSM would save at most (every
        present page beyond the first of its class, and every zero page with
        ``use_zero_pages``: the pages ``pages_sharing + ksm_zero_pages`` could reach)."""
        flags, cls = self.flags, self.cls
        present = zero = thp = swapped = file = 0
        counts: Counter[int] = Counter()
        states = [0, 0, 0, 0]
        for i in range(len(flags)):
            f = flags[i]
            states[(f & KSM_MASK) >> KSM_SHIFT] += 1
            if f & SWAPPED:
                swapped += 1
            if f & FILE:
                file += 1
            if not f & PRESENT:
                continue
            present += 1
            if f & THP:
                thp += 1
            c = cls[i]
            if c == ZERO_CLASS:
                zero += 1
            else:
                counts[c] += 1
        dup_pages = sum(n for n in counts.values() if n > 1)
        dup_classes = sum(1 for n in counts.values() if n > 1)
        unique = sum(1 for n in counts.values() if n == 1)
        changing = sum(1 for c in self.changes if c)
        cow = 0
        for _, m in self.mappings():
            if m.file:
                cow += sum(1 for i in range(m.first, m.first + m.pages) if flags[i] & PRESENT)
        return {
            "processes": len(self.processes),
            "mappings": sum(len(p.mappings) for p in self.processes),
            "pages": len(flags),
            "present": present,
            "zero": zero,
            "duplicate": dup_pages,
            "duplicate_classes": dup_classes,
            "unique": unique,
            "swapped": swapped,
            "thp": thp,
            "ksm_pages": states[KSM_PAGE],
            "zero_pfn": states[KSM_ZERO_PFN],
            "ambiguous": states[KSM_AMBIGUOUS],
            "changing": changing,
            "changes": sum(self.changes),
            "saving_pages": zero + dup_pages - dup_classes,
            "classes": self.classes,
            "file_mappings": sum(1 for _, m in self.mappings() if m.file),
            "file_pages": file,
            "cow": cow,
        }

    def walked_file_pages(self, merge: str = "captured") -> int:
        """Page-cache pages ksmd walks (and skips) in every full pass, under a merge mode of
        :data:`sim.fromcapture.MERGE_MODES`: the :data:`FILE` pages of the file mappings
        the mode makes mergeable (``captured``: VmFlags ``mg`` or a merge-any process;
        ``all`` and ``prctl``: every captured mapping) that have an anon_vma. ksmd skips a
        VMA without an anon_vma entirely (``scan_get_next_rmap_item``); a private file VMA
        has one once any of its pages was copied on write, which the capture sees as an
        anonymous page (present, swapped out or a KSM page) in it."""
        flags = self.flags
        total = 0
        for proc, m in self.mappings():
            if not m.file:
                continue
            if merge == "captured" and not (m.mergeable or proc.merge_any):
                continue
            span = range(m.first, m.first + m.pages)
            if not any(flags[i] & (PRESENT | SWAPPED) for i in span):
                continue  # no anonymous page: no anon_vma, ksmd skips the whole VMA
            total += sum(1 for i in span if flags[i] & FILE)
        return total

    # --------------------------------------------------------------- the file
    @property
    def version(self) -> int:
        """The version this capture needs: 2 with a file-backed mapping, else 1."""
        return VERSION if any(m.file for _, m in self.mappings()) else 1

    def header(self, columns: list[dict[str, Any]]) -> dict[str, Any]:
        head = {
            "format": FORMAT,
            "version": self.version,
            "created": self.created,
            "host": self.host,
            "snapshots": self.snapshots,
            "period_s": self.period_s,
            "pages": self.pages,
            "classes": self.classes,
            "ksm_rule": self.ksm_rule,
            "notes": list(self.notes),
            "processes": [p.to_dict() for p in self.processes],
            "columns": columns,
        }
        if self.class_order != "salted":  # a salted capture is written as before
            head["class_order"] = self.class_order
        return head

    def to_bytes(self, compress: bool = True) -> bytes:
        """The file's bytes (columns zlib-compressed unless ``compress`` is False)."""
        blobs: list[bytes] = []
        columns: list[dict[str, Any]] = []
        cols: list[tuple[str, array[int]]] = [("flags", self.flags), ("class", self.cls)]
        if self.snapshots > 1:
            cols.append(("changes", self.changes))
        for name, arr in cols:
            data = _le_bytes(arr)
            blob = zlib.compress(data, 6) if compress else data
            blobs.append(blob)
            columns.append(
                {"name": name, "type": arr.typecode, "bytes": len(blob), "zlib": compress}
            )
        head = json.dumps(self.header(columns), separators=(",", ":")).encode()
        return MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs)

    def save(self, path: str | Path, compress: bool = True) -> None:
        """Write the capture to ``path`` (written to a temporary name, then renamed)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(self.to_bytes(compress))
        tmp.replace(path)

    def digest(self) -> str:
        """SHA-256 of the uncompressed file: identifies the capture (sweep results)."""
        return hashlib.sha256(self.to_bytes(compress=False)).hexdigest()


def _le_bytes(arr: array[int]) -> bytes:
    if sys.byteorder == "big":  # pragma: no cover - no big-endian machine here
        arr = array(arr.typecode, arr)
        arr.byteswap()
    return arr.tobytes()


def _from_le(typecode: str, data: bytes) -> array[int]:
    arr = array(typecode)
    arr.frombytes(data)
    if sys.byteorder == "big":  # pragma: no cover
        arr.byteswap()
    return arr


# ----------------------------------------------------------------------- loading
class CaptureTooLarge(CaptureError):
    """The capture holds more pages than the reader allows (checked before any column is
    decompressed: a small file can claim a huge capture)."""


def load_capture(source: str | Path | bytes, max_pages: int | None = None) -> Capture:
    """Read and validate a capture (a path, or the file's bytes); :class:`CaptureError`
    with a clear message (and the field) when it is not a valid ``ksm-capture/1`` file,
    :class:`CaptureTooLarge` when it has more than ``max_pages`` pages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise CaptureError(f"cannot read {source}: {exc.strerror}") from None
    return _parse(data, MAX_PAGES if max_pages is None else min(max_pages, MAX_PAGES))


def _parse(data: bytes, max_pages: int = MAX_PAGES) -> Capture:
    if not data.startswith(MAGIC):
        raise CaptureError(f"not a capture file (it does not start with {MAGIC!r})")
    buf = io.BytesIO(data)
    buf.seek(len(MAGIC))
    raw = buf.read(4)
    if len(raw) < 4:
        raise CaptureError("truncated file: no header length")
    (hlen,) = struct.unpack("<I", raw)
    if hlen > MAX_HEADER_BYTES:
        raise CaptureError(f"header of {hlen} bytes (at most {MAX_HEADER_BYTES})", "header")
    head_bytes = buf.read(hlen)
    if len(head_bytes) < hlen:
        raise CaptureError("truncated file: the header is cut short", "header")
    try:
        head = json.loads(head_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CaptureError(f"the header is not JSON: {exc}", "header") from None
    if not isinstance(head, dict):
        raise CaptureError("the header must be a JSON object", "header")
    if head.get("format") != FORMAT:
        raise CaptureError(
            f"unsupported format {head.get('format')!r} (expected {FORMAT!r})", "format"
        )
    version = head.get("version")
    if isinstance(version, bool) or version not in VERSIONS:
        raise CaptureError(
            f"unsupported version {version!r} (this ksmlab reads {', '.join(map(str, VERSIONS))})",
            "version",
        )
    pages = _int(head, "pages", 0, 1 << 62)
    if pages > max_pages:
        raise CaptureTooLarge(f"the capture has {pages} pages, at most {max_pages} here", "pages")
    classes = _int(head, "classes", 1, max(1, pages + 1))
    snapshots = _int(head, "snapshots", 1, 1_000_000)
    period = head.get("period_s", 0.0)
    if isinstance(period, bool) or not isinstance(period, (int, float)) or period < 0:
        raise CaptureError("expected a number >= 0", "period_s")
    procs = _processes(head.get("processes"), version)
    total = sum(p.pages for p in procs)
    if total != pages:
        raise CaptureError(f"the mappings hold {total} pages, the header says {pages}", "pages")
    cols_raw = head.get("columns")
    if not isinstance(cols_raw, list):
        raise CaptureError("expected a list", "columns")
    got: dict[str, array[int]] = {}
    for n, col in enumerate(cols_raw):
        where = f"columns[{n}]"
        if not isinstance(col, dict):
            raise CaptureError("expected an object", where)
        name = col.get("name")
        if name not in COLUMNS or name in got:
            raise CaptureError(f"unknown or repeated column {name!r}", f"{where}.name")
        typecode = COLUMNS[name]
        if col.get("type") != typecode:
            raise CaptureError(f"column {name!r} must have type {typecode!r}", f"{where}.type")
        size = col.get("bytes")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise CaptureError("expected an integer >= 0", f"{where}.bytes")
        blob = buf.read(size)
        if len(blob) < size:
            raise CaptureError(f"truncated file: column {name!r} is cut short", where)
        want = pages * array(typecode).itemsize
        if col.get("zlib"):
            dec = zlib.decompressobj()
            try:
                blob = dec.decompress(blob, want + 1)
            except zlib.error as exc:
                raise CaptureError(
                    f"column {name!r} is not valid zlib data: {exc}", where
                ) from None
        if len(blob) != want:
            raise CaptureError(
                f"column {name!r} holds {len(blob)} bytes, {pages} pages need {want}", where
            )
        got[name] = _from_le(typecode, blob)
    if buf.read(1):
        raise CaptureError("unexpected bytes after the last column")
    for name in ("flags", "class"):
        if name not in got:
            raise CaptureError(f"the column {name!r} is missing", "columns")
    if snapshots > 1 and "changes" not in got:
        raise CaptureError("several snapshots but no 'changes' column", "columns")
    cls = got["class"]
    if pages and max(cls) >= classes:
        raise CaptureError(f"a page has class {max(cls)}, the header says {classes}", "class")
    flags = got["flags"]
    bits = FLAG_BITS if version >= 2 else FLAG_BITS & ~FILE
    seen = 0
    for f in set(flags.tobytes()):
        seen |= f
        if f & FILE and f & (PRESENT | THP):
            raise CaptureError(
                f"a page has flags {f:#x}: a FILE page is neither present nor THP", "flags"
            )
    if seen & ~bits:
        raise CaptureError(
            f"unknown flag bits {seen & ~bits:#x} (version {version} knows {bits:#x})", "flags"
        )
    notes = head.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(x, str) for x in notes):
        raise CaptureError("expected a list of strings", "notes")
    host = head.get("host", {})
    if not isinstance(host, dict):
        raise CaptureError("expected an object", "host")
    order = head.get("class_order", "salted")
    if order not in CLASS_ORDERS:
        raise CaptureError(
            f"unknown class order {order!r} (known: {', '.join(CLASS_ORDERS)})", "class_order"
        )
    return Capture(
        procs,
        got["flags"],
        cls,
        got.get("changes", array("H")),
        classes=classes,
        snapshots=snapshots,
        period_s=float(period),
        created=str(head.get("created", "")),
        host=host,
        ksm_rule=str(head.get("ksm_rule", "")),
        notes=list(notes),
        class_order=order,
    )


def _int(obj: dict[str, Any], key: str, lo: int, hi: int, where: str | None = None) -> int:
    value = obj.get(key)
    name = f"{where}.{key}" if where else key
    if isinstance(value, bool) or not isinstance(value, int):
        raise CaptureError(f"expected an integer, got {value!r}", name)
    if not lo <= value <= hi:
        raise CaptureError(f"must be between {lo} and {hi}", name)
    return value


def _str(obj: dict[str, Any], key: str, where: str, limit: int = 4096) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str) or len(value) > limit:
        raise CaptureError(f"expected a string of at most {limit} characters", f"{where}.{key}")
    return value


def _processes(raw: Any, version: int = VERSION) -> list[CapturedProcess]:
    if not isinstance(raw, list) or len(raw) > MAX_PROCESSES:
        raise CaptureError(f"expected a list of at most {MAX_PROCESSES} processes", "processes")
    out: list[CapturedProcess] = []
    nmaps = 0
    for n, p in enumerate(raw):
        where = f"processes[{n}]"
        if not isinstance(p, dict):
            raise CaptureError("expected an object", where)
        merge_any = p.get("merge_any")
        if merge_any is not None and not isinstance(merge_any, bool):
            raise CaptureError("expected true, false or null", f"{where}.merge_any")
        stat = p.get("ksm_stat")
        if stat is not None and (
            not isinstance(stat, dict) or not all(isinstance(v, (int, bool)) for v in stat.values())
        ):
            raise CaptureError("expected an object of integers", f"{where}.ksm_stat")
        proc = CapturedProcess(
            _int(p, "pid", 0, 1 << 31, where),
            _str(p, "comm", where, 64),
            _str(p, "exe", where),
            _str(p, "cgroup", where),
            merge_any,
            stat,
        )
        maps = p.get("mappings")
        if not isinstance(maps, list):
            raise CaptureError("expected a list", f"{where}.mappings")
        nmaps += len(maps)
        if nmaps > MAX_MAPPINGS:
            raise CaptureError(f"more than {MAX_MAPPINGS} mappings", f"{where}.mappings")
        for j, m in enumerate(maps):
            mw = f"{where}.mappings[{j}]"
            if not isinstance(m, dict):
                raise CaptureError("expected an object", mw)
            mergeable = m.get("mergeable", False)
            if not isinstance(mergeable, bool):
                raise CaptureError("expected true or false", f"{mw}.mergeable")
            is_file = m.get("file", False)
            if not isinstance(is_file, bool) or (is_file and version < 2):
                raise CaptureError(
                    "expected true or false (and only in a version 2 file)", f"{mw}.file"
                )
            proc.mappings.append(
                CapturedMapping(
                    _int(m, "start", 0, (1 << 64) - 1, mw),
                    _int(m, "pages", 1, MAX_PAGES, mw),
                    _str(m, "name", mw, 256),
                    mergeable,
                    file=is_file,
                )
            )
        out.append(proc)
    return out


# ------------------------------------------------------------------- building
class ClassTable:
    """Page fingerprints -> dense class ids (used while capturing; never stored).

    A page's fingerprint (:meth:`digest`) is SipHash-1-3, 64 bits, keyed with the
    interpreter's random 128-bit secret (Python's ``hash`` of the page's bytes: 5 to 10
    times faster here than BLAKE2b, and a keyed PRF too). :meth:`renumber` maps every
    fingerprint seen to a class: the zero page's to 0, the others to 1, 2, ... in the order
    of their BLAKE2b-64 keyed with this capture's random ``salt``, a permutation the salt
    alone decides. Neither the fingerprints nor the salt are stored, so class ids say
    nothing about the bytes and cannot be matched with another capture's.
    """

    def __init__(self, salt: bytes, page_size: int = 4096) -> None:
        if not 16 <= len(salt) <= 64:
            raise ValueError("the salt must be 16 to 64 bytes")
        self.salt = salt
        self.zero = self.digest(bytes(page_size))

    @staticmethod
    def digest(page: bytes | memoryview) -> int:
        """The fingerprint of a page (a ``bytes`` or a read-only memoryview of one)."""
        return hash(page if isinstance(page, (bytes, memoryview)) else bytes(page))

    def _order(self, d: int) -> bytes:
        return hashlib.blake2b(
            d.to_bytes(8, "little", signed=True), digest_size=8, key=self.salt
        ).digest()

    def renumber(
        self,
        digests: array[int],
        present: bytearray | bytes,
        keys: dict[int, bytes] | None = None,
    ) -> tuple[array[int], int]:
        """Class ids for ``digests`` (one per page; pages whose ``present`` is 0 get 0).

        With ``keys`` (fingerprint -> the page's bytes, or a prefix of them), the ids follow
        the keys' order, that is memcmp order (a capture's ``class_order: "memcmp"``); equal
        keys (prefixes of pages that differ further on) and fingerprints without a key
        follow the salted order among themselves."""
        seen = {d for d, p in zip(digests, present, strict=True) if p}
        seen.discard(self.zero)
        if keys is None:
            order = sorted(seen, key=self._order)
        else:
            order = sorted(seen, key=lambda d: (keys.get(d, b""), self._order(d)))
        ids = {d: i for i, d in enumerate(order, start=1)}
        ids[self.zero] = ZERO_CLASS
        out = array("I", [0]) * len(digests)
        for i, (d, p) in enumerate(zip(digests, present, strict=True)):
            if p:
                out[i] = ids[d]
        return out, len(seen) + 1
