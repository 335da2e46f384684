"""The host's KSM at a glance: every sysfs file, the processes that use KSM, derived figures.

What the live view shows (``app.live`` only turns it into JSON). Standard library only. Both
roots are parameters so tests can point them at fixture trees: ``sys_root`` is the directory
mounted at ``/sys`` (the KSM files are in ``<sys_root>/kernel/mm/ksm``) and ``proc_root`` the
one mounted at ``/proc``. The sysfs value parser here is the one the replayer's
:class:`app.kernel.sysfs.KsmSysfs` reads with too.

Conventions (``ksm-model.md`` §0.1, §8):

- a file or a ``ksm_stat`` line that this kernel lacks reads as ``None`` ("missing"), never 0;
- numeric files read as ``int`` (``general_profit`` and ``ksm_process_profit`` are signed),
  ``advisor_mode`` (``"[none] scan-time"``) as the selected word, with its choices kept;
- a process that exits while it is being read is skipped and counted as vanished; one whose
  files are not readable (another user's, when not root) is counted as unreadable.

Nothing here writes.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from sim.kernel import RMAP_ITEM_SIZE
from sim.ksm_files import FILES, release_key

from .procfs import PAGE_SIZE, ProcessGone, parse_ksm_stat

KSM_SUBDIR = "kernel/mm/ksm"

#: every file of /sys/kernel/mm/ksm on 6.1 to 6.18, with the release that added it
#: (``sim.ksm_files``; oldest first)
KNOWN_FILES: dict[str, str] = {
    f.name: f.added
    for f in sorted((f for f in FILES if f.place == "sysfs"), key=lambda f: release_key(f.added))
}

#: the writable files among KNOWN_FILES (git does not keep file modes of fixtures)
KNOBS = frozenset(f.name for f in FILES if f.place == "sysfs" and f.role == "knob")

#: per-process numeric fields, in ksm_stat order
PROC_COUNTERS = ("ksm_rmap_items", "ksm_zero_pages", "ksm_merging_pages", "ksm_process_profit")

_INT = re.compile(r"^-?\d+$")
_CHOICE = re.compile(r"\[([^\]]*)\]")

Value = int | str


def ksm_dir(sys_root: str | Path) -> Path:
    return Path(sys_root) / KSM_SUBDIR


def parse_sysfs_value(text: str) -> tuple[Value, list[str] | None]:
    """``"100\\n"`` -> ``(100, None)``; ``"[none] scan-time"`` -> ``("none", [choices])``."""
    text = text.strip()
    if _INT.match(text):
        return int(text), None
    m = _CHOICE.search(text)
    if m:
        return m.group(1), text.replace("[", "").replace("]", "").split()
    return text, None


def parse_value(text: str) -> Value:
    """``"100\\n"`` -> 100, ``"[none] scan-time"`` -> ``"none"``, anything else stripped."""
    return parse_sysfs_value(text)[0]


@dataclass
class KsmSample:
    """One reading of every file of ``<sys_root>/kernel/mm/ksm``."""

    time: float
    available: bool
    values: dict[str, Value | None]
    missing: list[str]
    knobs: list[str]
    choices: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def derived(self) -> list[Derived]:
        """The derived figures of these values (:func:`derive`)."""
        return derive(self.values)


def read_ksm(sys_root: str | Path) -> KsmSample:
    """Read every file of the KSM sysfs directory; known files that are absent are missing.

    ``available`` is False when the directory itself does not exist (no ``CONFIG_KSM``).
    """
    root = ksm_dir(sys_root)
    now = time.time()
    try:
        present = sorted(p.name for p in root.iterdir() if p.is_file())
    except OSError:
        return KsmSample(now, False, dict.fromkeys(KNOWN_FILES), sorted(KNOWN_FILES), [])
    values: dict[str, Value | None] = {}
    choices: dict[str, list[str]] = {}
    errors: dict[str, str] = {}
    for name in sorted(set(present) | set(KNOWN_FILES)):
        try:
            with open(root / name, encoding="ascii", errors="replace") as f:
                value, options = parse_sysfs_value(f.read())
        except FileNotFoundError:
            values[name] = None
            continue
        except OSError as exc:
            values[name] = None
            errors[name] = exc.strerror or str(exc)
            continue
        values[name] = value
        if options is not None:
            choices[name] = options
    missing = [n for n, v in values.items() if v is None and n not in errors]
    knobs = sorted(
        n for n in values if n in KNOBS or (n not in KNOWN_FILES and _writable(root / n))
    )
    return KsmSample(now, True, values, missing, knobs, choices, errors)


def _writable(path: Path) -> bool:
    try:
        return bool(os.stat(path).st_mode & 0o222)
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# processes


@dataclass
class ProcKsm:
    """One process's KSM counters; ``None`` where this kernel has no such line."""

    pid: int
    command: str
    ksm_rmap_items: int | None
    ksm_zero_pages: int | None
    ksm_merging_pages: int | None
    ksm_process_profit: int | None
    mergeable: bool | None
    merge_any: bool | None

    def uses_ksm(self) -> bool:
        counts = (self.ksm_rmap_items, self.ksm_zero_pages, self.ksm_merging_pages)
        return bool(self.mergeable or self.merge_any or any(counts))


@dataclass
class ProcTable:
    time: float
    procs: list[ProcKsm]
    scanned: int = 0
    vanished: int = 0
    unreadable: int = 0


def _read_proc_file(proc_root: Path, pid: int, name: str) -> str | None:
    """The file's text; None if this kernel lacks it; ProcessGone if the process exited."""
    try:
        with open(proc_root / str(pid) / name, encoding="utf-8", errors="replace") as f:
            return f.read()
    except ProcessLookupError:
        raise ProcessGone(pid) from None
    except FileNotFoundError:
        if not (proc_root / str(pid)).is_dir():
            raise ProcessGone(pid) from None
        return None


def read_proc(proc_root: str | Path, pid: int) -> ProcKsm:
    """One process's KSM counters. Raises ProcessGone, or PermissionError when unreadable."""
    root = Path(proc_root)
    stat_text = _read_proc_file(root, pid, "ksm_stat")
    stat = parse_ksm_stat(stat_text) if stat_text is not None else {}
    counts: dict[str, int | None] = {}
    for name in PROC_COUNTERS:
        value = stat.get(name)
        counts[name] = value if isinstance(value, int) and not isinstance(value, bool) else None
    if counts["ksm_merging_pages"] is None:  # before 6.4 only /proc/PID/ksm_merging_pages
        text = _read_proc_file(root, pid, "ksm_merging_pages")
        if text is not None and _INT.match(text.strip()):
            counts["ksm_merging_pages"] = int(text.strip())
    try:
        command = (_read_proc_file(root, pid, "comm") or "").strip()
    except PermissionError:
        command = ""
    flags = {k: v for k, v in stat.items() if isinstance(v, bool)}
    return ProcKsm(
        pid,
        command or "?",
        counts["ksm_rmap_items"],
        counts["ksm_zero_pages"],
        counts["ksm_merging_pages"],
        counts["ksm_process_profit"],
        flags.get("ksm_mergeable"),
        flags.get("ksm_merge_any"),
    )


def list_pids(proc_root: str | Path) -> list[int]:
    try:
        return sorted(int(p.name) for p in Path(proc_root).iterdir() if p.name.isdigit())
    except OSError:
        return []


def read_procs(proc_root: str | Path, *, include_all: bool = False) -> ProcTable:
    """The processes that use KSM (any counter non-zero, or mergeable / merge-any).

    ``include_all`` lists every readable process that has a memory map (kernels before 6.14
    have no ``ksm_mergeable`` line, so a mergeable process not scanned yet shows zeros);
    kernel threads (empty ``ksm_stat``) are never listed.
    """
    table = ProcTable(time.time(), [])
    for pid in list_pids(proc_root):
        table.scanned += 1
        try:
            proc = read_proc(proc_root, pid)
        except ProcessGone:
            table.vanished += 1
            continue
        except PermissionError:
            table.unreadable += 1
            continue
        except OSError:  # e.g. ESRCH surfacing as another errno while exiting
            table.vanished += 1
            continue
        if proc.uses_ksm() or (include_all and proc.ksm_rmap_items is not None):
            table.procs.append(proc)
    return table


# --------------------------------------------------------------------------------------
# derived figures


@dataclass
class Derived:
    name: str
    value: float | None
    unit: str
    explanation: str


def _int(values: dict[str, Value | None], name: str) -> int | None:
    v = values.get(name)
    return v if isinstance(v, int) else None


def global_rmap_items(values: dict[str, Value | None]) -> tuple[int | None, str]:
    """The kernel's ``ksm_rmap_items`` (not in sysfs), solved from ``general_profit``.

    general_profit = (pages_sharing + ksm_zero_pages) * PAGE_SIZE - rmap_items * 64
    (6.6+; without ksm_zero_pages on 6.4-6.5). Without general_profit (6.1) it is estimated
    as the sum of the four page counters, which is exact unless pages_volatile was clipped.
    """
    profit, sharing = _int(values, "general_profit"), _int(values, "pages_sharing")
    zero = _int(values, "ksm_zero_pages") or 0
    if profit is not None and sharing is not None:
        return ((sharing + zero) * PAGE_SIZE - profit) // RMAP_ITEM_SIZE, "from general_profit"
    parts = [
        _int(values, n)
        for n in ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile")
    ]
    if any(p is None for p in parts):
        return None, "missing"
    return sum(p for p in parts if p is not None), "estimated from the page counters"


def derive(values: dict[str, Value | None]) -> list[Derived]:
    """Sharing ratio, profit per rmap_item and the zero pages' share, explained."""
    shared, sharing = _int(values, "pages_shared"), _int(values, "pages_sharing")
    zero, profit = _int(values, "ksm_zero_pages"), _int(values, "general_profit")
    ratio = sharing / shared if shared and sharing is not None else None
    items, how = global_rmap_items(values)
    per_item = profit / items if profit is not None and items else None
    saved = (sharing or 0) + (zero or 0)
    zero_share = zero / saved if zero is not None and saved else None
    ratio_text = (
        "pages_sharing / pages_shared: how many extra virtual pages each KSM page stands in "
        "for, on average. A KSM page mapped by n processes counts once in pages_shared and "
        "n-1 times in pages_sharing; a high ratio means good sharing."
    )
    if ratio is None:
        ratio_text += " (No KSM page exists now, or a counter is missing.)"
    per_item_text = (
        f"general_profit / rmap_items, in bytes: what each page KSM tracks earns, after its "
        f"{RMAP_ITEM_SIZE}-byte rmap_item is paid for. Below zero, KSM costs more memory than "
        f"it saves. rmap_items = {items if items is not None else 'unknown'} ({how})."
    )
    if profit is None:
        per_item_text += " This kernel has no general_profit (added in 6.4)."
    zero_text = (
        "ksm_zero_pages / (pages_sharing + ksm_zero_pages): the part of the pages KSM saved "
        "that were empty pages mapped to the kernel's zero page (use_zero_pages=1) rather than "
        "to a shared KSM page."
    )
    if zero is None:
        zero_text += " This kernel has no ksm_zero_pages (added in 6.6)."
    return [
        Derived("sharing_ratio", ratio, "sharers per KSM page", ratio_text),
        Derived("profit_per_rmap_item", per_item, "bytes", per_item_text),
        Derived("zero_pages_share", zero_share, "fraction", zero_text),
    ]
