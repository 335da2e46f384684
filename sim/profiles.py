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


#: the release that brought each behaviour switch (ksm-model.md section 0)
SINCE: dict[str, tuple[int, int]] = {
    "has_prctl": (6, 4),
    "has_profit": (6, 4),
    "zero_page_series": (6, 6),
    "has_pages_scanned": (6, 6),
    "smart_scan": (6, 7),
    "checksum_first": (6, 11),
    "new_dup_choice": (6, 11),
    "thp_split_zero_remap": (6, 12),
    "has_mergeable_lines": (6, 14),
    "fork_resets_counters": (6, 18),
    "merge_any_kept_on_drop": (6, 18),
}
#: switches a profile's kernel has from a stable backport, ahead of its release
BACKPORTS: dict[str, frozenset[str]] = {
    # Debian's 6.12: the fork fix (6.12.54) and merge-any kept on drop (6.12.64)
    "6.12": frozenset({"fork_resets_counters", "merge_any_kept_on_drop"}),
}


def _profile(version: str) -> Profile:
    """A kernel's switches: those of its release and earlier ones, plus its backports."""
    release = tuple(int(x) for x in version.split("."))
    extra = BACKPORTS.get(version, frozenset())
    return Profile(version, **{k: release >= v or k in extra for k, v in SINCE.items()})


PROFILES: dict[str, Profile] = {v: _profile(v) for v in ("6.18", "6.12", "6.5", "6.1")}


def get_profile(version: str) -> Profile:
    try:
        return PROFILES[version]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ValueError(f"unknown kernel {version!r} (known: {known})") from None
