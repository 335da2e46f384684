"""Kernel version profiles: the complete list of behaviour switches (ksm-model.md §0).

"6.18" is the kernel these machines run; "6.12" is Debian's 6.12 (same behaviour, no
ksm_merge_any/ksm_mergeable lines); "6.5" is the last kernel before the zero-page series
("ksm: support unsharing KSM-placed zero pages", merged in 6.6); "6.1" is Debian's 6.1
(6.5 behaviour with an older interface: no prctl, no profit counters).

A profile's behaviour switches are named capabilities (``has_prctl``, ``smart_scan``...):
code asks for a capability, never compares version strings. Its files (knobs, global
counters, ``ksm_stat`` lines) derive from :mod:`sim.ksm_files`: a kernel has every file that
its release or an earlier one added.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ksm_files import files_of


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
    #: 6.12 "mm: remap unused subpages to shared zeropage when splitting isolated thp": a
    #: split of an anonymous THP (KSM splits one before merging a page of it) maps its
    #: zero-filled subpages to the shared zero page, clean and counted nowhere (sim.thp)
    thp_split_zero_remap: bool = False

    @property
    def knobs(self) -> tuple[str, ...]:
        """Writable files of /sys/kernel/mm/ksm this kernel has, in the table's order."""
        return files_of(self.version, "sysfs", "knob")

    @property
    def global_fields(self) -> tuple[str, ...]:
        """Global counters this kernel has (the others are reported as null), in trace order."""
        return files_of(self.version, "sysfs", "counter")

    @property
    def ksm_stat_lines(self) -> tuple[str, ...]:
        """Lines of /proc/PID/ksm_stat, in trace order (the 6.1 replayer adds ksm_merging_pages)."""
        return files_of(self.version, "ksm_stat")


PROFILES: dict[str, Profile] = {
    "6.18": Profile(
        "6.18",
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        thp_split_zero_remap=True,
    ),
    "6.12": Profile(
        "6.12",
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        False,
        thp_split_zero_remap=True,
    ),
    "6.5": Profile("6.5", False, False, False, False, False, False, True, True, False, False),
    "6.1": Profile("6.1", False, False, False, False, False, False, False, False, False, False),
}


def get_profile(version: str) -> Profile:
    try:
        return PROFILES[version]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ValueError(f"unknown kernel {version!r} (known: {known})") from None
