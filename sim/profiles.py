"""Kernel version profiles: the complete list of behaviour switches (ksm-model.md §0).

"6.18" is the kernel these machines run; "6.12" is Debian's 6.12 (same behaviour, no
ksm_merge_any/ksm_mergeable lines); "6.5" is the last kernel before the zero-page series
("ksm: support unsharing KSM-placed zero pages", merged in 6.6); "6.1" is Debian's 6.1
(6.5 behaviour with an older interface: no prctl, no profit counters).
"""

from __future__ import annotations

from dataclasses import dataclass

GLOBAL_FILES_61 = (
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "full_scans",
    "stable_node_chains",
    "stable_node_dups",
)


@dataclass(frozen=True)
class Profile:
    version: str
    #: 6.6 series: KSM-placed zero PTEs are marked dirty, counted, unshared, in the profit
    zero_page_series: bool
    #: 6.7 smart scan (`smart_scan`, `pages_skipped`)
    smart_scan: bool
    #: 6.11 cmp_and_merge_page order: checksum gate before the stable-tree search
    checksum_first: bool
    #: 6.11 dup choice: first live dup even if full; collapse whenever one dup is left
    new_dup_choice: bool
    #: 6.18 fork fix (stable 6.12.54): child counters reset, zero pages added to the global
    fork_resets_counters: bool
    #: merge-any kept when ksmd drops the process (Oct 2025, stable 6.12.64)
    merge_any_kept_on_drop: bool
    #: prctl(PR_SET_MEMORY_MERGE) exists (6.4)
    has_prctl: bool
    #: general_profit and ksm_process_profit exist (6.4)
    has_profit: bool
    #: pages_scanned exists (6.6)
    has_pages_scanned: bool
    #: ksm_stat has ksm_merge_any / ksm_mergeable lines (6.14)
    has_mergeable_lines: bool

    @property
    def knobs(self) -> tuple[str, ...]:
        base = (
            "run",
            "pages_to_scan",
            "sleep_millisecs",
            "use_zero_pages",
            "max_page_sharing",
            "merge_across_nodes",
            "stable_node_chains_prune_millisecs",
        )
        if not self.smart_scan:
            return base
        return base + (
            "smart_scan",
            "advisor_mode",
            "advisor_max_cpu",
            "advisor_min_pages_to_scan",
            "advisor_max_pages_to_scan",
            "advisor_target_scan_time",
        )

    @property
    def global_fields(self) -> tuple[str, ...]:
        """Global counters this kernel has (the others are reported as null)."""
        fields = list(GLOBAL_FILES_61)
        if self.has_profit:
            fields.append("general_profit")
        if self.zero_page_series:
            fields.append("ksm_zero_pages")
        if self.has_pages_scanned:
            fields.append("pages_scanned")
        if self.smart_scan:
            fields.append("pages_skipped")
        return tuple(fields)

    @property
    def ksm_stat_lines(self) -> tuple[str, ...]:
        """Lines of /proc/PID/ksm_stat, in order (the 6.1 replayer adds ksm_merging_pages)."""
        if not self.has_profit:
            return ("ksm_rmap_items",)
        lines = ["ksm_rmap_items"]
        if self.zero_page_series:
            lines.append("ksm_zero_pages")
        lines += ["ksm_merging_pages", "ksm_process_profit"]
        if self.has_mergeable_lines:
            lines += ["ksm_merge_any", "ksm_mergeable"]
        return tuple(lines)


PROFILES: dict[str, Profile] = {
    "6.18": Profile("6.18", True, True, True, True, True, True, True, True, True, True),
    "6.12": Profile("6.12", True, True, True, True, True, True, True, True, True, False),
    "6.5": Profile("6.5", False, False, False, False, False, False, True, True, False, False),
    "6.1": Profile("6.1", False, False, False, False, False, False, False, False, False, False),
}


def get_profile(version: str) -> Profile:
    try:
        return PROFILES[version]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ValueError(f"unknown kernel {version!r} (known: {known})") from None
