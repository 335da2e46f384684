"""The overview of a large session: per-bucket page-kind counts, and what a viewer's zoom shows.

A session of more than :data:`DETAIL_MAX_PAGES` pages is too large to send page by page (a
16,777,216-page host is 16 M pages of columns per snapshot). Its viewers get an *overview*
instead: each mapping cut into buckets of ``bucket`` pages (a power of two), and for each
bucket how many of its pages are of each kind (:data:`sim.snapshot.KIND_NAMES`); per-page
columns only for the pages the viewer's zoom shows (its *detail* ranges). A viewer says what
it shows with a ``viewport`` message (:class:`Viewport`); viewers with the same viewport share
one encoded message per step.

Bucket records (``docs/protocol.md``): ``varint(mask)`` (bit ``k`` set when the bucket holds a
page of kind ``k``), then ``varint(count)`` for each set bit, lowest kind first. A snapshot's
lane lists every bucket of a mapping in order; a delta's lane lists the changed buckets, each
preceded by ``varint(bucket - previous bucket - 1)`` (previous starts at -1).

Counting is C-speed: a run of pages of one kind is found with a compiled regular expression
(the first byte that is not that kind), so a homogeneous stretch of buckets costs one search
and one ``bytes`` repetition; only mixed buckets are counted kind by kind (``bytes.count``).
A step's changes recount only the buckets that hold a page whose kind changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sim.snapshot import KIND_NAMES

#: sessions up to this many pages get whole per-page snapshots (the original path)
DETAIL_MAX_PAGES = 1 << 20
#: at most this many buckets in one viewport (all mappings together)
MAX_BUCKETS = 1 << 19
#: at most this many pages of per-page data in one viewport
MAX_DETAIL_PAGES = 1 << 18
#: a new viewer's overview has at most this many buckets (until it says what it shows)
DEFAULT_BUCKETS = 1 << 14
#: the largest bucket (a power of two)
MAX_BUCKET = 1 << 24
NKINDS = len(KIND_NAMES)

_NOT = [re.compile(b"[^" + re.escape(bytes([k])) + b"]") for k in range(256)]


def uvarint(out: bytearray, n: int) -> None:
    """Unsigned LEB128."""
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _homogeneous(kind: int, n: int) -> bytes:
    out = bytearray()
    uvarint(out, 1 << kind)
    uvarint(out, n)
    return bytes(out)


@dataclass(frozen=True)
class Viewport:
    """What one viewer shows: the bucket size of its overview, and the page ranges
    ``(uid, lo, hi)`` (half-open) it gets page by page."""

    bucket: int
    detail: tuple[tuple[int, int, int], ...] = ()

    def detail_of(self, uid: int) -> list[tuple[int, int]]:
        return [(lo, hi) for u, lo, hi in self.detail if u == uid]

    def shows(self, uid: int, page: int) -> bool:
        return any(u == uid and lo <= page < hi for u, lo, hi in self.detail)


def default_bucket(total_pages: int) -> int:
    """The smallest power of four that cuts ``total_pages`` into at most DEFAULT_BUCKETS
    (powers of four: the browser draws a bucket as a square of pages)."""
    b = 1
    while b < MAX_BUCKET and -(-total_pages // b) > DEFAULT_BUCKETS:
        b <<= 2
    return b


def min_bucket(lanes: Iterable[int]) -> int:
    """The smallest power of two with at most MAX_BUCKETS buckets for these mapping sizes."""
    sizes = list(lanes)
    b = 1
    while b < MAX_BUCKET and sum(-(-n // b) for n in sizes) > MAX_BUCKETS:
        b <<= 1
    return b


def bucket_record(kinds: bytes | bytearray | memoryview, lo: int, hi: int, out: bytearray) -> None:
    """Append the record of pages ``[lo, hi)``."""
    first = kinds[lo]
    m = _NOT[first].search(kinds, lo, hi)
    if m is None:
        uvarint(out, 1 << first)
        uvarint(out, hi - lo)
        return
    chunk = bytes(kinds[lo:hi])
    mask = 0
    counts = []
    for k in range(NKINDS):
        c = chunk.count(k)
        if c:
            mask |= 1 << k
            counts.append(c)
    uvarint(out, mask)
    for c in counts:
        uvarint(out, c)


def lane_records(kinds: bytes | bytearray, bucket: int) -> tuple[int, bytes]:
    """Every bucket of one mapping: ``(number of buckets, records)``."""
    n = len(kinds)
    nb = -(-n // bucket)
    out = bytearray()
    b = 0
    while b < nb:
        lo = b * bucket
        k = kinds[lo]
        m = _NOT[k].search(kinds, lo)
        run_end = n if m is None else m.start()
        full = (run_end - lo) // bucket  # whole buckets of one kind from here
        if full:
            last_full = b + full
            if last_full == nb and n % bucket:  # the short last bucket
                full -= 1
            if full:
                out += _homogeneous(k, bucket) * full
                b += full
                continue
        hi = min(lo + bucket, n)
        bucket_record(kinds, lo, hi, out)
        b += 1
    return nb, bytes(out)


def changed_records(
    kinds: bytes | bytearray, bucket: int, ranges: Sequence[tuple[int, int]]
) -> tuple[int, bytes]:
    """The buckets that meet ``ranges`` (``[lo, hi)``, holding every page whose kind
    changed): ``(count, gap-prefixed records)``."""
    n = len(kinds)
    out = bytearray()
    prev = -1
    count = 0
    buckets: set[int] = set()
    for lo, hi in ranges:
        if lo < n:
            buckets.update(range(lo // bucket, (min(hi, n) - 1) // bucket + 1))
    for b in sorted(buckets):
        uvarint(out, b - prev - 1)
        prev = b
        bucket_record(kinds, b * bucket, min(b * bucket + bucket, n), out)
        count += 1
    return count, bytes(out)


def decode_records(buf: bytes, gaps: bool = False) -> list[tuple[int, dict[int, int]]]:
    """``[(bucket, {kind: count})]`` (for tests and benchmarks)."""
    out: list[tuple[int, dict[int, int]]] = []
    i, b = 0, -1

    def rd() -> int:
        nonlocal i
        v, shift = 0, 0
        while True:
            x = buf[i]
            i += 1
            v |= (x & 0x7F) << shift
            shift += 7
            if not x & 0x80:
                return v

    while i < len(buf):
        b = b + rd() + 1 if gaps else b + 1
        mask = rd()
        counts = {k: rd() for k in range(NKINDS) if mask >> k & 1}
        out.append((b, counts))
    return out


# ---------------------------------------------------------------- a 64 GiB host
def vm_host_scenario(
    guests: int = 4,
    pages: int = 4_194_304,
    labels: int = 64,
    kernel: str = "6.18",
    planted: Sequence[int] = (3_000_000, 3_500_001),
) -> dict[str, object]:
    """A ``ksm-scenario/1`` document: a VM host of ``guests`` x ``pages`` pages (default 4 x
    4,194,304 = 16,777,216 pages, 64 GiB), the mixed workload of ``bench/sim_throughput.py``
    per guest: 25% zero-filled, 25% the same guest OS in ``labels`` labelled runs (every guest
    the same labels, so each label is shared by ``guests x run`` pages: ``max_page_sharing`` is
    raised to that), 50% unique; a few zero pages ``planted`` among guest 2's unique pages (the
    minority the overview must show). ``use_zero_pages=1``, ``pages_to_scan`` 65,536."""
    q = pages // 4
    run = max(1, q // labels)
    steps: list[dict[str, object]] = []
    for g in range(1, guests + 1):
        p = f"vm{g}"
        steps += [
            {"op": "spawn", "proc": p},
            {"op": "mmap", "proc": p, "vma": "ram", "pages": pages},
            {"op": "write", "proc": p, "vma": "ram", "content": "zero", "pages": f"0-{q - 1}"},
        ]
        for j in range(labels):
            lo = q + j * run
            hi = 2 * q - 1 if j == labels - 1 else lo + run - 1
            steps.append(
                {"op": "write", "proc": p, "vma": "ram", "content": f"os{j}", "pages": f"{lo}-{hi}"}
            )
        steps.append(
            {
                "op": "write",
                "proc": p,
                "vma": "ram",
                "content": "unique",
                "pages": f"{2 * q}-{pages - 1}",
            }
        )
        if g == 2:
            for i in planted:
                if 2 * q <= i < pages:
                    steps.append(
                        {"op": "write", "proc": p, "vma": "ram", "content": "zero", "pages": str(i)}
                    )
        steps.append({"op": "madvise", "proc": p, "vma": "ram", "advice": "MADV_MERGEABLE"})
    steps.append({"op": "checkpoint", "name": "booted"})
    steps.append({"op": "sysfs", "knob": "run", "value": 1})
    sharing = max(256, guests * run)
    kib = guests * pages * 4  # 4 KiB pages
    size = (
        f"{kib >> 20}g" if kib % (1 << 20) == 0 else f"{kib >> 10}m" if kib >= 1024 else f"{kib}k"
    )
    return {
        "format": "ksm-scenario/1",
        "name": f"vm-host-{size}",
        "title": f"A VM host: {guests} guests, {guests * pages:,} pages",
        "description": "The mixed workload of bench/sim_throughput.py on a whole host: each "
        "guest 25% zero-filled, 25% the same guest OS, 50% its own data; a few zero pages "
        "planted among guest 2's data.",
        "kernel": kernel,
        "sysfs": {"use_zero_pages": 1, "pages_to_scan": 65536, "max_page_sharing": sharing},
        "steps": steps,
    }


if __name__ == "__main__":  # pragma: no cover - python -m app.server.overview > host.json
    import json
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4_194_304
    json.dump(vm_host_scenario(pages=n), sys.stdout, separators=(",", ":"))
