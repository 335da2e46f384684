"""The profiles' files derive from sim/ksm_files.py and equal the lists they replaced; their
behaviour switches derive from the release of each (``SINCE``, ``BACKPORTS``) and equal the
table they replaced."""

from __future__ import annotations

import dataclasses

import pytest

from sim.ksm_files import FILES, present, sysfs_file
from sim.profiles import PROFILES, SINCE, Profile

KNOBS_61 = (
    "run",
    "pages_to_scan",
    "sleep_millisecs",
    "use_zero_pages",
    "max_page_sharing",
    "merge_across_nodes",
    "stable_node_chains_prune_millisecs",
)
KNOBS_67 = KNOBS_61 + (
    "smart_scan",
    "advisor_mode",
    "advisor_max_cpu",
    "advisor_min_pages_to_scan",
    "advisor_max_pages_to_scan",
    "advisor_target_scan_time",
)
GLOBAL_61 = (
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "full_scans",
    "stable_node_chains",
    "stable_node_dups",
)
GLOBAL_65 = GLOBAL_61 + ("general_profit",)
GLOBAL_612 = GLOBAL_65 + ("ksm_zero_pages", "pages_scanned", "pages_skipped")
STAT_65 = ("ksm_rmap_items", "ksm_merging_pages", "ksm_process_profit")
STAT_612 = ("ksm_rmap_items", "ksm_zero_pages", "ksm_merging_pages", "ksm_process_profit")
# the hand-written lists the derivation replaced (global fields and ksm_stat lines as sets:
# the derived ones come in the table's, i.e. the trace format's, order)
BEFORE = {
    "6.18": (KNOBS_67, GLOBAL_612, STAT_612 + ("ksm_merge_any", "ksm_mergeable")),
    "6.12": (KNOBS_67, GLOBAL_612, STAT_612),
    "6.5": (KNOBS_61, GLOBAL_65, STAT_65),
    "6.1": (KNOBS_61, GLOBAL_61, ("ksm_rmap_items",)),
}


@pytest.mark.parametrize("version", list(PROFILES))
def test_derived_files_equal_the_lists_they_replaced(version: str) -> None:
    p = PROFILES[version]
    knobs, fields, lines = BEFORE[version]
    assert p.knobs == knobs
    assert set(p.global_fields) == set(fields) and len(p.global_fields) == len(fields)
    assert set(p.ksm_stat_lines) == set(lines) and len(p.ksm_stat_lines) == len(lines)
    for names, place in ((p.global_fields, "sysfs"), (p.ksm_stat_lines, "ksm_stat")):
        order = [f.name for f in FILES if f.place == place]
        assert list(names) == sorted(names, key=order.index)


@pytest.mark.parametrize("version", list(PROFILES))
def test_capabilities_agree_with_the_release_of_their_files(version: str) -> None:
    p = PROFILES[version]
    has = {f.name: present(f, version) for f in FILES if f.place == "sysfs"}
    assert p.has_profit == has["general_profit"] == ("ksm_process_profit" in p.ksm_stat_lines)
    assert p.zero_page_series == has["ksm_zero_pages"]
    assert p.has_pages_scanned == has["pages_scanned"]
    assert p.smart_scan == has["smart_scan"] == has["pages_skipped"]
    assert p.has_mergeable_lines == ("ksm_merge_any" in p.ksm_stat_lines)


#: the switches as the table before ``SINCE`` listed them, in Profile's field order:
#: zero_page_series, smart_scan, checksum_first, new_dup_choice, fork_resets_counters,
#: merge_any_kept_on_drop, has_prctl, has_profit, has_pages_scanned, has_mergeable_lines,
#: thp_split_zero_remap
SWITCHES_BEFORE = {
    "6.18": (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1),
    "6.12": (1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1),
    "6.5": (0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0),
    "6.1": (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
}


@pytest.mark.parametrize("version", list(PROFILES))
def test_switches_derive_from_their_release_and_equal_the_table_they_replaced(
    version: str,
) -> None:
    switches = [f.name for f in dataclasses.fields(Profile) if f.name != "version"]
    assert set(SINCE) == set(switches)  # every switch has its release (none defaults)
    got = tuple(int(getattr(PROFILES[version], name)) for name in switches)
    assert got == SWITCHES_BEFORE[version]


def test_release_of_a_file() -> None:
    assert present(sysfs_file("ksm_zero_pages"), "6.6")
    assert not present(sysfs_file("ksm_zero_pages"), "6.5")
    assert present(sysfs_file("advisor_mode"), "6.12")
