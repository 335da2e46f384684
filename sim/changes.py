"""The change record of one step: what ksmd or a process operation touched.

Its size is proportional to what changed, never to memory size: ``events`` lists what
happened to which page (with the kernel path in :data:`EVENT_PATHS`), ``pages`` the
(mapping uid, page) pairs whose PTE or rmap_item changed, ``frames`` the frames whose
kind or map count changed. Page keys are ``uid << 32 | page``: build one with
:func:`page_key`, take one apart with :func:`split_key` (front ends never shift keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field

KEY_SHIFT = 32
KEY_MASK = (1 << KEY_SHIFT) - 1


def page_key(vma_uid: int, page: int) -> int:
    """The key of page ``page`` of the mapping whose uid is ``vma_uid``."""
    return (vma_uid << KEY_SHIFT) | page


def split_key(key: int) -> tuple[int, int]:
    """``(vma_uid, page)`` of a page key (not for the ``-1`` of a global event)."""
    return key >> KEY_SHIFT, key & KEY_MASK


#: event kind -> the kernel path that produces it (6.6+ wording; see :func:`event_path`)
EVENT_PATHS: dict[str, str] = {
    "write": "do_anonymous_page / do_wp_page: the process writes the page",
    "cow": "do_wp_page -> wp_page_copy: copy-on-write gives the writer a private copy",
    "cow_zero": "do_wp_page -> wp_page_copy -> ksm_might_unmap_zero_page: write to a "
    "KSM-placed zero page, ksm_zero_pages -1",
    "read_fault": "do_anonymous_page: read fault maps the shared zero page (PTE clean)",
    "zap": "zap_pte_range: the PTE is cleared",
    "zap_zero": "zap_pte_range -> ksm_might_unmap_zero_page: KSM-placed zero page unmapped, "
    "ksm_zero_pages -1",
    "unshare": "break_ksm -> handle_mm_fault(FAULT_FLAG_UNSHARE): KSM page replaced by a "
    "private copy",
    "unshare_zero": "break_ksm -> wp_page_copy -> ksm_might_unmap_zero_page: KSM-placed zero "
    "page replaced by a private zero-filled page",
    "item_new": "scan_get_next_rmap_item -> get_next_rmap_item: new rmap_item",
    "item_free": "get_next_rmap_item / remove_trailing_rmap_items -> free_rmap_item",
    "volatile": "cmp_and_merge_page -> calc_checksum: checksum changed, page is volatile",
    "smart_skip": "scan_get_next_rmap_item -> should_skip_rmap_item: smart scan skips the page",
    "unstable_insert": "cmp_and_merge_page -> unstable_tree_search_insert: inserted in the "
    "unstable tree",
    "zero_merge": "cmp_and_merge_page -> try_to_merge_with_zero_page -> try_to_merge_one_page "
    "-> replace_page: now maps the zero page, PTE marked dirty",
    "merge": "cmp_and_merge_page -> stable_tree_search -> try_to_merge_with_ksm_page -> "
    "replace_page: merged into an existing KSM page",
    "merge_new": "cmp_and_merge_page -> try_to_merge_two_pages -> stable_tree_insert: two "
    "pages form a new KSM page",
    "ksm_append": "cmp_and_merge_page -> stable_tree_append: a KSM page reached by fork is "
    "accounted",
    "node_removed": "remove_node_from_stable_tree: stale stable node dropped",
    "chain_created": "stable_tree_insert -> alloc_stable_node_chain: a new stable_node chain",
    "chain_freed": "free_stable_node_chain: an empty chain is freed",
    "chain_collapsed": "stable_node_dup: a chain with one dup collapses into a regular node",
    "pass_end": "scan_get_next_rmap_item: full scan completed (full_scans +1)",
    "mm_dropped": "scan_get_next_rmap_item: no VM_MERGEABLE VMA left, mm_slot removed",
    "unmerge_all": "run=2 -> unmerge_and_remove_all_rmap_items",
    "thp_zero": "try_to_merge_one_page -> split_huge_page -> remap_page -> "
    "try_to_map_unused_to_zeropage: a zero-filled subpage of the split THP now maps the zero "
    "page (PTE clean, counted nowhere)",
}

PATHS_65 = {
    "zero_merge": "cmp_and_merge_page -> try_to_merge_one_page -> replace_page: now maps the "
    "zero page (PTE clean: indistinguishable from a read fault, not counted)",
}


def event_path(kind: str, zero_page_series: bool = True) -> str:
    if not zero_page_series and kind in PATHS_65:
        return PATHS_65[kind]
    return EVENT_PATHS.get(kind, kind)


@dataclass
class ChangeLog:
    """What one step changed. ``events`` are ``(kind, key)``; key -1 for global events."""

    events: list[tuple[str, int]] = field(default_factory=list)
    pages: set[int] = field(default_factory=set)
    frames: set[int] = field(default_factory=set)

    def event(self, kind: str, key: int = -1) -> None:
        self.events.append((kind, key))
        if key >= 0:
            self.pages.add(key)

    def clear(self) -> None:
        self.events.clear()
        self.pages.clear()
        self.frames.clear()
