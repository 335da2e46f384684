"""One table of the KSM files: every file of ``/sys/kernel/mm/ksm`` and every line of
``/proc/PID/ksm_stat`` that KSM Lab knows, with the release that added it, its default (for
knobs), its unit and what it means in one line.

Everything that lists counters or knobs derives from here: the profiles, the trace format's
fields and default knobs, the replayer, the live view, the sweep and the browser (which gets
the table in each snapshot). Standard library only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from typing import Any, Literal

Role = Literal["knob", "counter"]
Place = Literal["sysfs", "ksm_stat"]
Unit = Literal["pages", "bytes", "ms", "s", "percent", "passes", "count", "flag", "mode"]


@dataclass(frozen=True)
class KsmFile:
    """One file (``sysfs``) or ``ksm_stat`` line."""

    name: str
    role: Role
    place: Place
    added: str  #: the kernel release that added it
    unit: Unit
    meaning: str
    default: int | str | None = None  #: a knob's value after boot
    #: a running total since boot (full_scans, pages_scanned...), not a level
    cumulative: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _knob(name: str, added: str, unit: Unit, default: int | str, meaning: str) -> KsmFile:
    return KsmFile(name, "knob", "sysfs", added, unit, meaning, default)


def _counter(name: str, added: str, unit: Unit, meaning: str, total: bool = False) -> KsmFile:
    return KsmFile(name, "counter", "sysfs", added, unit, meaning, cumulative=total)


def _stat(name: str, added: str, unit: Unit, meaning: str) -> KsmFile:
    return KsmFile(name, "counter", "ksm_stat", added, unit, meaning)


#: in the order of the knob forms (knobs) and of the ``ksm-trace/1`` format (counters)
FILES: tuple[KsmFile, ...] = (
    _knob("run", "2.6.32", "mode", 0, "0 stops ksmd, 1 runs it, 2 stops it and unmerges all"),
    _knob("pages_to_scan", "2.6.32", "pages", 100, "pages ksmd scans in one batch"),
    _knob("sleep_millisecs", "2.6.32", "ms", 20, "ksmd's sleep between two batches"),
    _knob("use_zero_pages", "4.11", "flag", 0, "merge all-zero pages with the zero page"),
    _knob("max_page_sharing", "4.13", "count", 256, "PTEs one KSM page backs at most"),
    _knob("merge_across_nodes", "3.9", "flag", 1, "merge pages of different NUMA nodes"),
    _knob("stable_node_chains_prune_millisecs", "4.13", "ms", 2000, "how often chains are pruned"),
    _knob("smart_scan", "6.7", "flag", 1, "skip pages that did not merge in recent passes"),
    _knob("advisor_mode", "6.8", "mode", "none", "none, or scan-time: the advisor sets speed"),
    _knob("advisor_max_cpu", "6.8", "percent", 70, "CPU share the advisor lets ksmd use"),
    _knob("advisor_min_pages_to_scan", "6.8", "pages", 500, "the advisor's lowest batch"),
    _knob("advisor_max_pages_to_scan", "6.8", "pages", 30000, "the advisor's highest batch"),
    _knob("advisor_target_scan_time", "6.8", "s", 200, "the advisor's target time per pass"),
    _counter("pages_shared", "2.6.32", "pages", "KSM pages in use, each backing several PTEs"),
    _counter("pages_sharing", "2.6.32", "pages", "PTEs on a KSM page beyond its first: saved"),
    _counter("pages_unshared", "2.6.32", "pages", "pages scanned, unique so far (unstable tree)"),
    _counter("pages_volatile", "2.6.32", "pages", "pages that change too fast to be in a tree"),
    _counter("ksm_zero_pages", "6.6", "pages", "PTEs KSM mapped to the zero page (dirty-marked)"),
    _counter("general_profit", "6.4", "bytes", "memory saved minus what the rmap_items cost"),
    _counter("stable_node_chains", "4.13", "count", "KSM contents split into a chain of dups"),
    _counter("stable_node_dups", "4.13", "count", "KSM pages (dups) on those chains"),
    _counter("full_scans", "2.6.32", "passes", "passes ksmd has completed", total=True),
    _counter("pages_scanned", "6.6", "pages", "pages ksmd has scanned since boot", total=True),
    _counter("pages_skipped", "6.7", "pages", "pages smart scan skipped", total=True),
    _stat("ksm_rmap_items", "6.1", "count", "rmap_items of the process (64 bytes each)"),
    _stat("ksm_zero_pages", "6.6", "pages", "its PTEs KSM mapped to the zero page"),
    _stat("ksm_merging_pages", "6.4", "pages", "its PTEs that map a KSM page"),
    _stat("ksm_process_profit", "6.4", "bytes", "its memory saved minus its rmap_items' cost"),
    _stat("ksm_mergeable", "6.14", "flag", "some of its VMAs are mergeable"),
    _stat("ksm_merge_any", "6.14", "flag", "prctl(PR_SET_MEMORY_MERGE) is on"),
)

BY_NAME: dict[tuple[Place, str], KsmFile] = {(f.place, f.name): f for f in FILES}

#: writable files of /sys/kernel/mm/ksm
KNOBS: tuple[str, ...] = tuple(f.name for f in FILES if f.role == "knob")
#: read-only files of /sys/kernel/mm/ksm (the trace format's ``global`` fields, in its order)
GLOBAL_COUNTERS: tuple[str, ...] = tuple(
    f.name for f in FILES if f.place == "sysfs" and f.role == "counter"
)
#: ``/proc/PID/ksm_stat`` lines (the trace format's ``procs`` fields, in its order)
KSM_STAT: tuple[str, ...] = tuple(f.name for f in FILES if f.place == "ksm_stat")
#: every file of /sys/kernel/mm/ksm
SYSFS: tuple[str, ...] = tuple(f.name for f in FILES if f.place == "sysfs")
#: each knob's value after boot
KNOB_DEFAULTS: dict[str, int | str] = {
    f.name: f.default for f in FILES if f.role == "knob" and f.default is not None
}


def release_key(release: str) -> tuple[int, ...]:
    """``"6.12"`` -> ``(6, 12)``, for comparing releases."""
    return tuple(int(part) for part in release.split("."))


def sysfs_file(name: str) -> KsmFile:
    return BY_NAME[("sysfs", name)]


def present(f: KsmFile, release: str) -> bool:
    """Whether kernel ``release`` has the file (it is at least the release that added it)."""
    return release_key(f.added) <= release_key(release)


@cache
def files_of(release: str, place: Place, role: Role | None = None) -> tuple[str, ...]:
    """The names of the files (or ksm_stat lines) kernel ``release`` has, in table order."""
    return tuple(
        f.name
        for f in FILES
        if f.place == place and (role is None or f.role == role) and present(f, release)
    )


def table() -> list[dict[str, Any]]:
    """The whole table as JSON-ready rows (sent to the browser)."""
    return [f.as_dict() for f in FILES]
