"""Read-only views of a :class:`~sim.kernel.Kernel` for front ends.

- :func:`page_kinds`: one byte per page of a mapping, the cell colour classes of the page
  grid (:data:`KIND_NAMES`);
- :func:`structure`: processes, mappings, ksmd's list and cursor, knobs and counters (no
  per-page data);
- :func:`page_detail`: everything about one page (PTE bits, frame, rmap_item, stable node
  with its sharers) and a one-line answer to "why is this page not merged (yet)?";
- :func:`describe_events`: a change record's events as dicts with their kernel paths;
- :func:`describe`: one step in words (the "what just happened" line, its lead event chosen
  by :data:`SUMMARY_ORDER`) and as data (its first events, the count per kind, and the
  step's structured description, :attr:`sim.stepper.Outcome.what`);
- the tables front ends draw from: :data:`PAGE_KINDS` (the page kinds with their labels and
  meanings) and :data:`FRAME_KINDS` (:func:`frame_kind`), :func:`kinds_table`;
- what a front end mirrors to compute changes: :func:`stable_node_rows`, :func:`signature`,
  :func:`all_ksm_stats`, :func:`event_paths`.

Nothing here changes the kernel's state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .changes import EVENT_PATHS, ChangeLog, event_path, split_key
from .mm import (
    ITEM_ABSENT,
    ITEM_NONE,
    ITEM_STABLE,
    ITEM_UNSTABLE,
    PTE_DIRTY,
    PTE_EXCLUSIVE,
    PTE_SPECIAL,
    PTE_WRITE,
    THP_ZERO,
    Vma,
)

if TYPE_CHECKING:
    from .kernel import Kernel
    from .stepper import Outcome

KIND_NONE = 0  # PTE not present
KIND_ANON = 1  # private anonymous page, no rmap_item
KIND_VOLATILE = 2  # has an rmap_item in no tree (new or changing checksum)
KIND_UNSTABLE = 3  # tracked in the unstable tree
KIND_KSM = 4  # maps a KSM page
KIND_ZERO = 5  # the shared zero page, placed by a read fault (clean PTE)
KIND_KSM_ZERO = 6  # the shared zero page placed by KSM, PTE marked dirty (6.6+)
KIND_SKIPPED = 7  # smart scan skipped it in its last visit
KIND_STALE = 8  # unmerged, its rmap_item still on a stable node until ksmd's next pass


@dataclass(frozen=True)
class KindRow:
    """One page kind (or frame kind): its number on the wire, name, legend label, meaning."""

    id: int
    name: str
    label: str
    meaning: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "label": self.label, "meaning": self.meaning}


#: the page kinds, in :data:`KIND_NAMES` order (the cell colour classes of the page grid)
PAGE_KINDS: tuple[KindRow, ...] = (
    KindRow(KIND_NONE, "none", "not present", "the PTE is not present"),
    KindRow(KIND_ANON, "anon", "private anon", "a private anonymous page, no rmap_item"),
    KindRow(
        KIND_VOLATILE, "volatile", "volatile", "an rmap_item in no tree (new or changing checksum)"
    ),
    KindRow(KIND_UNSTABLE, "unstable", "unstable tree", "tracked in the unstable tree"),
    KindRow(KIND_KSM, "ksm", "KSM page (darker: more sharers)", "maps a KSM page"),
    KindRow(
        KIND_ZERO,
        "zero",
        "zero page, clean PTE (read fault; KSM before 6.6)",
        "the shared zero page placed by a read fault (clean PTE)",
    ),
    KindRow(
        KIND_KSM_ZERO,
        "ksm_zero",
        "KSM-placed zero page (dirty PTE)",
        "the shared zero page placed by KSM, PTE marked dirty (6.6+)",
    ),
    KindRow(KIND_SKIPPED, "skipped", "skipped by smart scan", "smart scan skipped it last visit"),
    KindRow(
        KIND_STALE,
        "stale",
        "unmerged, rmap_item still on a stable node",
        "a private copy again (copy-on-write or MADV_UNMERGEABLE) whose rmap_item still hangs on"
        " its stable node: it counts in pages_shared/pages_sharing until ksmd's next pass"
        " drops it",
    ),
)

#: page kind names, indexed by the ``KIND_*`` numbers (the snapshot's ``kinds``)
KIND_NAMES: tuple[str, ...] = tuple(row.name for row in PAGE_KINDS)
assert all(row.id == i for i, row in enumerate(PAGE_KINDS))

FRAME_FREE, FRAME_ANON, FRAME_KSM, FRAME_ZERO = 0, 1, 2, 3

#: the frame kinds of the physical view (:func:`frame_kind`)
FRAME_KINDS: tuple[KindRow, ...] = (
    KindRow(FRAME_FREE, "free", "free", "no PTE maps it"),
    KindRow(FRAME_ANON, "anon", "anonymous page", "a private anonymous page"),
    KindRow(FRAME_KSM, "ksm", "KSM page", "a KSM page (in the stable tree)"),
    KindRow(FRAME_ZERO, "zero", "zero page", "the shared zero page (pfn 0)"),
)


def kinds_table() -> dict[str, list[dict[str, Any]]]:
    """The page and frame kinds as JSON-ready rows (sent to the browser)."""
    return {
        "pages": [row.as_dict() for row in PAGE_KINDS],
        "frames": [row.as_dict() for row in FRAME_KINDS],
    }


def frame_kind(k: Kernel, pfn: int) -> int:
    """The :data:`FRAME_KINDS` number of a frame."""
    if pfn == 0:
        return FRAME_ZERO
    if k.f_map[pfn] <= 0:
        return FRAME_FREE
    return FRAME_KSM if k.f_node[pfn] >= 0 else FRAME_ANON


def frame_kinds(k: Kernel) -> bytearray:
    """The kind of every frame, one byte each."""
    return bytearray(frame_kind(k, pfn) for pfn in range(len(k.f_map)))


def page_kind(k: Kernel, vma: Vma, i: int) -> int:
    pfn = vma.pfn[i]
    if pfn < 0:
        return KIND_NONE
    if pfn == 0:
        return KIND_KSM_ZERO if vma.pte[i] & PTE_DIRTY else KIND_ZERO
    if k.f_node[pfn] >= 0:
        return KIND_KSM
    st = vma.it_state[i]
    if st == ITEM_UNSTABLE:
        return KIND_UNSTABLE
    if st == ITEM_STABLE:
        return KIND_STALE
    if st:
        return KIND_SKIPPED if vma.it_skipped[i] else KIND_VOLATILE
    return KIND_ANON


def page_kinds(k: Kernel, vma: Vma) -> bytearray:
    """The kind of every page of a mapping, one byte each."""
    out = bytearray(vma.npages)
    pfns, pte, state, skipped, f_node = vma.pfn, vma.pte, vma.it_state, vma.it_skipped, k.f_node
    for i in range(vma.npages):
        pfn = pfns[i]
        if pfn < 0:
            continue
        if pfn == 0:
            out[i] = KIND_KSM_ZERO if pte[i] & PTE_DIRTY else KIND_ZERO
        elif f_node[pfn] >= 0:
            out[i] = KIND_KSM
        else:
            st = state[i]
            if st == ITEM_UNSTABLE:
                out[i] = KIND_UNSTABLE
            elif st == ITEM_STABLE:
                out[i] = KIND_STALE
            elif st:
                out[i] = KIND_SKIPPED if skipped[i] else KIND_VOLATILE
            else:
                out[i] = KIND_ANON
    return out


def structure(k: Kernel) -> dict[str, Any]:
    """Processes, mappings, ksmd's list and cursor, knobs and counters."""
    cursor: dict[str, Any] = {"proc": None, "vma": None, "page": None}
    if k.cursor is not None:
        cursor["proc"] = k.cursor.name
        for v in k.cursor.regions:
            if not v.dead and v.start <= k.cursor_addr < v.end:
                cursor["vma"] = v.name
                cursor["page"] = k.cursor_addr - v.start
                break
    procs = []
    for name, mm in k.procs.items():
        procs.append(
            {
                "name": name,
                "pid": mm.pid,
                "registered": mm.registered,
                "merge_any": mm.merge_any,
                "vmas": [
                    {
                        "name": v.name,
                        "uid": v.uid,
                        "start": v.start,
                        "npages": v.npages,
                        "anon_vma": v.anon_vma,
                    }
                    for v in mm.vmas.values()
                ],
                "ksm_stat": k.ksm_stat(name),
            }
        )
    return {
        "kernel": k.version,
        "knobs": dict(k.knobs),
        "global": k.global_counters(),
        "procs": procs,
        "ksmd": {
            "slots": [mm.name if not mm.exiting else f"{mm.name} (exiting)" for mm in k.slots],
            "cursor": cursor,
            "full_scans": k.seqnr,
            "should_run": k.ksmd_should_run,
        },
        "stable_tree": {
            "nodes": sum(1 for n in k.nodes.values() if n.kind != "chain"),
            "chains": k.stable_node_chains,
            "dups": k.stable_node_dups,
        },
        "unstable_tree": len(k.unstable),
    }


def _label(k: Kernel, content: int) -> str:
    if content == 0:
        return "zero"
    for label, cid in k.labels.items():
        if cid == content:
            return label
    return f"unique#{content}"


def page_detail(
    k: Kernel, proc: str, vma_name: str, i: int, ksm_placed: bool | None = None
) -> dict[str, Any]:
    """Everything about one page, and why it is not merged (yet). ``ksm_placed``: whether
    KSM put this page on the zero page, from the run's history (None: not known), which a
    kernel before 6.6 cannot tell (see :func:`why_not_merged`)."""
    vma = k.vma(proc, vma_name)
    if not 0 <= i < vma.npages:
        from .errors import OpError

        raise OpError(f"page {i} is outside the {vma.npages}-page mapping", "page")
    pfn = vma.pfn[i]
    flags = vma.pte[i]
    detail: dict[str, Any] = {
        "proc": proc,
        "vma": vma_name,
        "page": i,
        "kind": KIND_NAMES[page_kind(k, vma, i)],
        "mergeable": bool(vma.mergeable[i]),
        "pte": {
            "present": pfn >= 0,
            "pfn": pfn if pfn >= 0 else None,
            "writable": bool(flags & PTE_WRITE),
            "dirty": bool(flags & PTE_DIRTY),
            "special": bool(flags & PTE_SPECIAL),
            "exclusive": bool(flags & PTE_EXCLUSIVE),
        },
        "frame": None,
        "rmap_item": None,
        "stable_node": None,
    }
    if pfn == 0:
        detail["frame"] = {"kind": FRAME_KINDS[FRAME_ZERO].label, "pfn": 0, "content": "zero"}
    elif pfn > 0:
        nid = k.f_node[pfn]
        detail["frame"] = {
            "kind": FRAME_KINDS[FRAME_KSM if nid >= 0 else FRAME_ANON].label,
            "pfn": pfn,
            "mapcount": k.f_map[pfn],
            "content": _label(k, k.f_content[pfn]),
        }
    st = vma.it_state[i]
    if st:
        content = k.f_content[pfn] if pfn > 0 else 0
        detail["rmap_item"] = {
            "state": {ITEM_NONE: "none", ITEM_UNSTABLE: "unstable", ITEM_STABLE: "stable"}[st],
            "checksum_stable": pfn > 0 and vma.it_sum[i] == content,
            "age": vma.it_age[i],
            "remaining_skips": vma.it_skip[i],
            "skipped_last_visit": bool(vma.it_skipped[i]),
        }
    nid = k.f_node[pfn] if pfn > 0 else -1
    if nid >= 0:
        node = k.nodes[nid]
        sharers = []
        for key in sorted(node.items):
            v, j = k.vma_of(key)
            sharers.append({"proc": v.mm.name, "vma": v.name, "page": j})
        detail["stable_node"] = {
            "nid": nid,
            "kind": node.kind,
            "chain": node.chain.nid if node.chain is not None else None,
            "rmap_hlist_len": len(node.items),
            "mapcount": k.f_map[pfn],
            "sharers": sharers,
            # the same pages as ranges ("A heap[100-199]"), for people to read
            "sharer_ranges": page_ranges(k, node.items, None)[0],
        }
    detail["why"] = why_not_merged(k, vma, i, ksm_placed)
    return detail


def _old_zero_page(vma: Vma, i: int, ksm_placed: bool | None) -> str:
    """Before the 6.6 series, a zero page KSM placed has the PTE of a read fault's: the
    kernel cannot tell them apart, the simulator can. ``ksm_placed`` is the run's history
    (the timeline's ``zero_merge`` events); without it, the page's rmap_item is the trace (a
    read fault's zero page never gets one, ksmd only looks at anonymous pages; ksmd frees it
    at its next pass)."""
    by_ksm = bool(ksm_placed) or vma.it_state[i] != ITEM_ABSENT
    known = by_ksm or ksm_placed is not None
    if not vma.mergeable[i]:
        if by_ksm:
            return (
                "Left behind by MADV_UNMERGEABLE: KSM had merged this page into the shared "
                "zero page (use_zero_pages=1), and before 6.6 break_ksm cannot tell that from "
                "a read fault's zero page, so it stays on the zero page, in no counter. The "
                "6.6 series (dirty-marked KSM zero PTEs, ksm_zero_pages) fixed it."
            )
        if known:
            return "Maps the shared zero page after a read fault; its mapping is not VM_MERGEABLE."
        return (
            "Maps the shared zero page in a mapping that is not VM_MERGEABLE: a read fault, "
            "or a page KSM merged before MADV_UNMERGEABLE left it behind (before 6.6 the two "
            "cannot be told apart, and neither is counted)."
        )
    if by_ksm:
        return (
            "Merged: KSM mapped it to the shared zero page (use_zero_pages=1). Before 6.6 "
            "its PTE is the same as a read fault's, and no counter includes it."
        )
    if known:
        return (
            "Maps the shared zero page after a read fault: not anonymous memory, ksmd never "
            "looks at it."
        )
    return (
        "Maps the shared zero page (a read fault, or KSM with use_zero_pages=1: on "
        "this kernel the two cannot be told apart and neither is counted)."
    )


def why_not_merged(k: Kernel, vma: Vma, i: int, ksm_placed: bool | None = None) -> str:
    """A one-line answer to "why is this page not merged (yet)?"."""
    pfn = vma.pfn[i]
    zero_series = k.profile.zero_page_series
    if pfn < 0:
        return "Not present: the page was never touched, there is nothing to merge."
    if pfn == 0:
        if vma.pte[i] & PTE_DIRTY:
            item = (
                " Its rmap_item is in no tree: it still counts in pages_volatile until "
                "ksmd's next pass drops it."
                if vma.it_state[i] == ITEM_NONE
                else ""
            )
            return (
                "Merged: KSM mapped it to the shared zero page (use_zero_pages=1); the "
                "dirty bit marks it as KSM-placed, so it is counted in ksm_zero_pages." + item
            )
        if vma.thp is not None and vma.thp[i] == THP_ZERO:
            return (
                "Maps the shared zero page since KSM split its transparent huge page: the "
                "split maps zero-filled subpages to the zero page (6.12+, a clean PTE like a "
                "read fault's). The memory is saved, but no KSM counter includes it."
            )
        if zero_series:
            return (
                "Maps the shared zero page after a read fault: not anonymous memory, "
                "ksmd never looks at it."
            )
        return _old_zero_page(vma, i, ksm_placed)
    nid = k.f_node[pfn]
    if nid >= 0:
        node = k.nodes[nid]
        st = vma.it_state[i]
        accounted = st == ITEM_STABLE and vma.it_node[i] == nid
        tail = "" if accounted else " ksmd will account it when its scan reaches this page."
        return f"Merged: shares one KSM page with {k.f_map[pfn] - 1} other mapping(s)" + (
            f" (stable node {node.nid})." if accounted else "." + tail
        )
    if vma.it_state[i] == ITEM_STABLE:
        return (
            f"Unmerged: a private copy again, but its rmap_item still hangs on stable node "
            f"{vma.it_node[i]} and counts in pages_shared/pages_sharing until ksmd's next "
            "pass drops it."
        )
    if not vma.mergeable[i]:
        return "Its VMA is not VM_MERGEABLE: MADV_MERGEABLE or prctl(PR_SET_MEMORY_MERGE) first."
    if not vma.mm.registered:
        return "Its process is not on ksmd's list yet."
    st = vma.it_state[i]
    content = k.f_content[pfn]
    if not st:
        return "ksmd has not scanned it yet: its next visit creates an rmap_item."
    if vma.it_skipped[i]:
        return (
            f"Smart scan skipped it in its last visit (age {vma.it_age[i]}): pages that "
            "never merge are looked at less and less often."
        )
    if vma.it_sum[i] != content:
        return (
            "Volatile: its content changed since ksmd recorded its checksum; it must "
            "stay unchanged for one pass before it is compared with other pages."
        )
    if st == ITEM_UNSTABLE:
        return (
            "In the unstable tree: no identical page was found in this pass yet; an "
            "identical page scanned later would merge with it."
        )
    if k.f_map[pfn] > 1:
        return (
            "Shared copy-on-write with another process after fork: the unstable tree "
            "holds one of the mappings, this one waits until they differ or merge."
        )
    return (
        "Waiting for its next scan: the checksum recorded at its last scan must still "
        "match (the checksum gate), then it is looked up in the stable and unstable trees."
    )


def describe_events(k: Kernel, log: ChangeLog, limit: int | None = None) -> list[dict[str, Any]]:
    """The events of a change record, as dicts naming the page and the kernel path."""
    out = []
    zero_series = k.profile.zero_page_series
    for kind, key in log.events[:limit] if limit is not None else log.events:
        event: dict[str, Any] = {"kind": kind, "path": event_path(kind, zero_series)}
        if key >= 0:
            uid, page = split_key(key)
            v = k.vmas_by_uid.get(uid)
            if v is not None:
                event.update(proc=v.mm.name, vma=v.name, page=page)
        out.append(event)
    return out


# ------------------------------------------------------------------ mirrored views
StableNodeRow = tuple[int, str, int, int, int]
"""``(nid, kind, pfn, rmap_hlist_len, chain nid or -1)``."""


def stable_node_rows(k: Kernel) -> dict[int, StableNodeRow]:
    """Every stable node (regular, chain, dup) as a row, by nid."""
    return {
        n.nid: (n.nid, n.kind, n.pfn, len(n.items), n.chain.nid if n.chain is not None else -1)
        for n in k.nodes.values()
    }


def signature(k: Kernel) -> tuple[Any, ...]:
    """What a change of pages cannot express: processes, their flags and their live mappings."""
    return tuple(
        (
            name,
            mm.pid,
            mm.registered,
            mm.merge_any,
            tuple((v.uid, v.npages) for v in mm.vmas.values()),
        )
        for name, mm in k.procs.items()
    )


def all_ksm_stats(k: Kernel) -> dict[str, dict[str, int | bool | None]]:
    """``/proc/PID/ksm_stat`` of every process."""
    return {name: k.ksm_stat(name) for name in k.procs}


def event_paths(k: Kernel) -> dict[str, str]:
    """Every event kind's kernel path, in this profile's wording."""
    series = k.profile.zero_page_series
    return {kind: event_path(kind, series) for kind in EVENT_PATHS}


# ------------------------------------------------------------------------ describe
#: the most telling event first: it names the step in the "what just happened" line
SUMMARY_ORDER = (
    "zero_merge",
    "merge_new",
    "merge",
    "thp_zero",
    "unshare_zero",
    "unshare",
    "unmerge_all",
    "cow_zero",
    "cow",
    "zap_zero",
    "zap",
    "ksm_append",
    "chain_created",
    "chain_collapsed",
    "chain_freed",
    "node_removed",
    "volatile",
    "unstable_insert",
    "smart_skip",
    "item_free",
    "item_new",
    "read_fault",
    "write",
    "mm_dropped",
    "pass_end",
)

#: events listed one by one in a step's description (all are counted)
MAX_EVENTS = 16

Event = tuple[str, str | None, str | None, int | None]
"""``(kind, proc, vma, page)``; proc, vma and page are None for a global event."""


@dataclass(frozen=True)
class Summary:
    """One step described: ``text`` (the "what just happened" line), its first ``events``,
    ``counts`` (events per kind) and ``what`` (the step's structured description,
    :attr:`sim.stepper.Outcome.what`, with ``counts`` added)."""

    text: str
    events: list[Event] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    what: dict[str, Any] = field(default_factory=dict)


def event_where(k: Kernel, kind: str, key: int) -> Event:
    """An event with the process, mapping and page its key names."""
    if key < 0:
        return (kind, None, None, None)
    uid, page = split_key(key)
    v = k.vmas_by_uid.get(uid)
    if v is None:
        return (kind, None, None, page)
    return (kind, v.mm.name, v.name, page)


def describe(k: Kernel, log: ChangeLog | None, outcome: Outcome) -> Summary:
    """One step: ``outcome`` (what the action did) and ``log`` (what it changed)."""
    action = outcome.text
    if log is None or not log.events:
        facts = outcome.what
        if facts.get("scanned") and facts.get("grain") in ("page", "batch"):
            # a page or batch of ksmd where nothing changed still names its path
            action += ": ksm_do_scan -> cmp_and_merge_page: nothing changed"
        words, chain = step_words(k, log, outcome, None)
        return Summary(
            action, [], {}, {**outcome.what, "counts": {}, "words": words, "chain": chain}
        )
    counts = dict(Counter(kind for kind, _ in log.events))
    events = [event_where(k, kind, key) for kind, key in log.events[:MAX_EVENTS]]
    # a first visit stores the page's first checksum through the checksum gate, which logs
    # it volatile too: the step is about meeting those pages, not about pages that changed
    leads = Counter(kind for kind, key in _without_first_checksums(log.events))
    lead = next((kind for kind in SUMMARY_ORDER if kind in leads), log.events[0][0])
    first = next(key for kind, key in _without_first_checksums(log.events) if kind == lead)
    _, proc, vma, page = event_where(k, lead, first)
    path, _, what = event_path(lead, k.profile.zero_page_series).partition(": ")
    where = f"{proc} {vma}[{page}] " if proc is not None else ""
    line = f"{path}: {where}{what}"
    if counts[lead] > 1:
        line += f" (+{counts[lead] - 1} more)"
    if lead != "pass_end" and "pass_end" in counts:
        line += "; full scan completed"
    if action:
        line = f"{action}: {line}"
    words, chain = step_words(k, log, outcome, lead)
    facts = {**outcome.what, "counts": counts, "words": words, "chain": chain}
    return Summary(line, events, counts, facts)


def _without_first_checksums(events: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The events less the ``volatile`` of pages met for the first time in the same step
    (their new rmap_item took its first checksum: nothing changed since a last look)."""
    new = {key for kind, key in events if kind == "item_new"}
    if not new:
        return events
    return [(kind, key) for kind, key in events if kind != "volatile" or key not in new]


# ------------------------------------------------------------ plain words and call chains
def page_ranges(k: Kernel, keys: Iterable[int], limit: int | None = 3) -> tuple[list[str], int]:
    """Pages named by their keys, grouped as ranges: ``(["A heap[100-199]", "B heap[7]"],
    groups)``, at most ``limit`` of them listed (mapping order, then page order) and
    ``groups`` the number of ranges in all."""
    by_vma: dict[int, list[int]] = {}
    for key in keys:
        if key < 0:
            continue
        uid, page = split_key(key)
        by_vma.setdefault(uid, []).append(page)
    out: list[str] = []
    total = 0
    for uid in sorted(by_vma):
        v = k.vmas_by_uid.get(uid)
        name = f"{v.mm.name} {v.name}" if v is not None else f"mapping {uid}"
        pages = sorted(set(by_vma[uid]))
        start = prev = pages[0]
        for p in [*pages[1:], None]:
            if p is not None and p == prev + 1:
                prev = p
                continue
            total += 1
            if limit is None or len(out) < limit:
                out.append(f"{name}[{start}]" if start == prev else f"{name}[{start}-{prev}]")
            if p is not None:
                start = prev = p
    return out, total


def _ranges_text(k: Kernel, keys: Iterable[int]) -> str:
    shown, total = page_ranges(k, keys)
    text = ", ".join(shown)
    if total > len(shown):
        text += f" and {total - len(shown)} more range{'s' if total - len(shown) > 1 else ''}"
    return text


#: what a ksmd batch calls before the event's own path
KSMD_CHAIN = ("ksmd", "ksm_do_scan")

#: event kind -> the plain-words sentence (``{who}``: the pages as ranges, ``{n}`` their
#: number) and the kernel call chain from the point the step's cause enters it, by profile:
#: ``series`` for the kernels with the zero-page series (6.12, 6.18), ``old`` for 6.1/6.5.
#: Checked against mm/ksm.c and mm/memory.c of each: zero pages merge through
#: ``try_to_merge_with_zero_page`` (added in 6.8) with ``replace_page`` marking the PTE
#: dirty (``pte_mkdirty``, 6.6+); 6.1 and 6.5 call ``try_to_merge_one_page`` inline from
#: ``cmp_and_merge_page`` and ``replace_page`` leaves the PTE clean.
_ChainRow = tuple[str, tuple[str, ...]]
STEP_WORDS: dict[str, dict[str, _ChainRow]] = {
    "thp_zero": {
        "any": (
            "ksmd split a transparent huge page to merge a page of it: {who} were "
            "zero-filled and now map the shared zero page with a clean PTE, memory saved "
            "that no KSM counter shows ({n} pages)",
            (
                "cmp_and_merge_page",
                "try_to_merge_one_page",
                "split_huge_page",
                "remap_page (RMP_USE_SHARED_ZEROPAGE)",
                "try_to_map_unused_to_zeropage",
            ),
        ),
    },
    "zero_merge": {
        "series": (
            "ksmd merged {who} into the zero page: their PTEs are now dirty-marked "
            "(ksm_zero_pages +{n})",
            (
                "cmp_and_merge_page",
                "try_to_merge_with_zero_page",
                "try_to_merge_one_page",
                "write_protect_page",
                "replace_page (pte_mkdirty)",
            ),
        ),
        "old": (
            "ksmd merged {who} into the zero page: their PTEs stay clean, so the kernel "
            "cannot tell them from read faults (not counted)",
            ("cmp_and_merge_page", "try_to_merge_one_page", "write_protect_page", "replace_page"),
        ),
    },
    "merge_new": {
        "any": (
            "ksmd merged {who}: identical pages found in the unstable tree now share new KSM "
            "pages (write-protected)",
            (
                "cmp_and_merge_page",
                "unstable_tree_search_insert",
                "try_to_merge_two_pages",
                "try_to_merge_one_page",
                "replace_page",
                "stable_tree_insert",
            ),
        ),
    },
    "merge": {
        "any": (
            "ksmd merged {who} into an existing KSM page",
            (
                "cmp_and_merge_page",
                "stable_tree_search",
                "try_to_merge_with_ksm_page",
                "try_to_merge_one_page",
                "replace_page",
            ),
        ),
    },
    "ksm_append": {
        "any": (
            "ksmd accounted {who}: they already mapped a KSM page (shared by fork)",
            ("cmp_and_merge_page", "stable_tree_search", "stable_tree_append"),
        ),
    },
    "unshare_zero": {
        "any": (
            "{who} left the zero page KSM had placed: each got a private zero-filled page "
            "(ksm_zero_pages -{n})",
            (
                "break_ksm",
                "handle_mm_fault (FAULT_FLAG_UNSHARE)",
                "do_wp_page",
                "wp_page_copy",
                "ksm_might_unmap_zero_page",
            ),
        ),
    },
    "unshare": {
        "any": (
            "{who} left their KSM pages: each got a private copy",
            ("break_ksm", "handle_mm_fault (FAULT_FLAG_UNSHARE)", "do_wp_page", "wp_page_copy"),
        ),
    },
    "unmerge_all": {
        "any": (
            "ksmd unmerged every KSM page and dropped every rmap_item (run=2)",
            ("break_ksm",),
        ),
    },
    "cow_zero": {
        "any": (
            "{who} was written: copy-on-write replaced the KSM-placed zero page with a private "
            "page (ksm_zero_pages -{n})",
            ("do_wp_page", "wp_page_copy", "ksm_might_unmap_zero_page"),
        ),
    },
    "cow": {
        "any": (
            "{who} was written: copy-on-write gave the writer a private copy of the shared page",
            ("do_wp_page", "wp_page_copy"),
        ),
    },
    "zap_zero": {
        "any": (
            "{who} was unmapped, KSM-placed zero pages with it (ksm_zero_pages -{n})",
            ("zap_pte_range", "ksm_might_unmap_zero_page"),
        ),
    },
    "zap": {"any": ("{who} was unmapped", ("zap_pte_range",))},
    "chain_created": {
        "any": (
            "a KSM page reached max_page_sharing sharers: its stable node became a chain of dups",
            ("stable_tree_insert", "alloc_stable_node_chain"),
        ),
    },
    "chain_collapsed": {
        "any": (
            "a stable_node chain with one dup left collapsed into a regular stable node",
            ("stable_node_dup", "collapse"),
        ),
    },
    "chain_freed": {
        "any": ("an empty stable_node chain was freed", ("free_stable_node_chain",)),
    },
    "node_removed": {
        "any": (
            "ksmd dropped a stable node no page maps any more",
            ("remove_node_from_stable_tree",),
        ),
    },
    "volatile": {
        "any": (
            "ksmd found {who} changed since its last look (checksum differs): volatile, not "
            "merged in this pass",
            ("cmp_and_merge_page", "calc_checksum"),
        ),
    },
    "unstable_insert": {
        "any": (
            "ksmd put {who} in the unstable tree: no identical page found yet",
            ("cmp_and_merge_page", "unstable_tree_search_insert"),
        ),
    },
    "smart_skip": {
        "any": (
            "ksmd skipped {who}: smart scan saw them unchanged for several passes",
            ("scan_get_next_rmap_item", "should_skip_rmap_item"),
        ),
    },
    "item_free": {
        "any": (
            "ksmd freed the rmap_items of {who}: no page to track there any more",
            ("scan_get_next_rmap_item", "get_next_rmap_item / remove_trailing_rmap_items"),
        ),
    },
    "item_new": {
        "any": (
            "ksmd met {who} for the first time: a new rmap_item and a checksum each",
            ("scan_get_next_rmap_item", "get_next_rmap_item", "alloc_rmap_item"),
        ),
    },
    "read_fault": {
        "any": (
            "{who} was read before any write: it maps the shared zero page (PTE clean)",
            ("do_anonymous_page",),
        ),
    },
    "write": {"any": ("{who} was written", ("do_anonymous_page / do_wp_page",))},
    "mm_dropped": {
        "any": (
            "ksmd dropped a process with no mergeable mapping left from its list",
            ("scan_get_next_rmap_item", "remove_mm_slot"),
        ),
    },
    "pass_end": {
        "any": (
            "ksmd completed a full pass (full_scans +1)",
            ("scan_get_next_rmap_item",),
        ),
    },
}

#: what the ops of a scenario call before the event's own path (kind of op -> chain head)
OP_CHAIN: dict[str, tuple[str, ...]] = {
    "madvise:MADV_UNMERGEABLE": ("madvise", "ksm_madvise", "unmerge_ksm_pages"),
    "madvise:MADV_MERGEABLE": ("madvise", "ksm_madvise", "__ksm_enter"),
    "madvise": ("madvise",),
    "write": ("page fault", "handle_mm_fault"),
    "read": ("page fault", "handle_mm_fault"),
    "munmap": ("munmap", "unmap_region"),
    "exit": ("exit_mmap", "unmap_vmas"),
    "fork": ("fork", "dup_mmap", "ksm_fork"),
    "prctl": ("prctl (PR_SET_MEMORY_MERGE)", "ksm_enable_merge_any"),
    "sysfs": ("sysfs write",),
    "knob": ("sysfs write",),
    "run=2": (
        "echo 2 > run",
        "run_store",
        "unmerge_and_remove_all_rmap_items",
        "unmerge_ksm_pages",
    ),
}


def _chain_head(what: dict[str, Any]) -> tuple[str, ...]:
    kind = what.get("kind")
    if kind == "ksmd" or (kind == "op" and what.get("op") == "scan"):
        return KSMD_CHAIN
    op = what.get("op") if kind == "op" else kind
    if op in ("sysfs", "knob") and what.get("knob") == "run" and str(what.get("value")) == "2":
        return OP_CHAIN["run=2"]
    advice = what.get("advice")
    return OP_CHAIN.get(f"{op}:{advice}", OP_CHAIN.get(str(op), ()))


def step_words(
    k: Kernel, log: ChangeLog | None, outcome: Outcome, lead: str | None
) -> tuple[str, str]:
    """A step in plain words, and its kernel call chain (``"a → b → c"``; may be empty):
    from the :data:`STEP_WORDS` row of its lead event (the profile's variant) and the
    chain head of what caused it (:data:`KSMD_CHAIN`, :data:`OP_CHAIN`), keyed by the
    outcome's facts, never by its sentence."""
    what = outcome.what
    head = _chain_head(what)
    if lead is None or log is None:
        if what.get("kind") == "ksmd" or what.get("op") == "scan":
            n = int(what.get("scanned", 0))
            words = (
                f"ksmd looked at {n} page{'s' if n != 1 else ''}: nothing changed"
                if n
                else "ksmd found no page left in this pass"
            )
            if what.get("kind") == "op":
                words = f"ksmd starts ({outcome.text.split(':')[0]}): " + words
            return words, " → ".join((*head, "cmp_and_merge_page") if n else head)
        if what.get("kind") == "checkpoint":
            return f"checkpoint {what.get('name')!r}", ""
        if what.get("op") == "madvise" and what.get("advice") == "MADV_MERGEABLE":
            where = f"{what.get('proc')} {what.get('vma')}"
            return f"{where} is now mergeable (MADV_MERGEABLE): ksmd will scan it", " → ".join(head)
        return outcome.text, " → ".join(head)
    row = STEP_WORDS.get(lead)
    if row is None:
        return outcome.text, " → ".join(head)
    words, chain = row.get("any") or row["series" if k.profile.zero_page_series else "old"]
    merged = ("merge_new", "merge") if lead == "merge_new" else (lead,)
    keys = [key for kind, key in _without_first_checksums(log.events) if kind in merged]
    who = _ranges_text(k, keys)
    text = words.format(who=who or "pages", n=len(keys))
    if lead != "unmerge_all" and any(kind == "unmerge_all" for kind, _ in log.events):
        text = f"run=2: ksmd unmerged every KSM page and dropped every rmap_item; {text}"
    if lead == "write" and what.get("kind") == "op" and what.get("content") is not None:
        text += f" with {what['content']!r}"
    if lead != "pass_end" and any(kind == "pass_end" for kind, _ in log.events):
        text += "; ksmd completed a full pass"
    if what.get("kind") == "op" and what.get("op") == "madvise":
        text = f"{what.get('advice')}: {text}"
    return text, " → ".join((*head, *chain))
