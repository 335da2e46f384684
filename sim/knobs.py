"""sysfs knobs of ``/sys/kernel/mm/ksm``: defaults, parsing and validation (ksm-model.md §10).

Writes are parsed as the kernel parses them (``kstrtouint``, ``kstrtobool``, ...) and
rejected with the kernel's errno (:class:`sim.errors.KnobError`). ``run=2`` runs
``unmerge_and_remove_all_rmap_items``.
"""

from __future__ import annotations

import re
from typing import Any

from .advisor import AdvisorCtx, scan_time_advisor
from .errors import KnobError
from .ksm_files import KNOB_DEFAULTS
from .process import ProcessMixin
from .trace import GLOBAL_FIELDS

DEFAULTS: dict[str, Any] = dict(KNOB_DEFAULTS)

#: the knobs a scenario starts from (``scenario-format.md``: "default knobs"); the replayer
#: writes them before every replay, the simulator starts from :data:`DEFAULTS`
FORMAT_KNOBS = (
    "run",
    "pages_to_scan",
    "sleep_millisecs",
    "use_zero_pages",
    "max_page_sharing",
    "merge_across_nodes",
    "smart_scan",
    "stable_node_chains_prune_millisecs",
)

UINT_MAX = (1 << 32) - 1
INT_MAX = (1 << 31) - 1
ULONG_MAX = (1 << 64) - 1

_NUM = re.compile(r"^\+?([0-9]+)\n?$")
_SNUM = re.compile(r"^([+-]?)([0-9]+)\n?$")


def _echo(text: str) -> str:
    """A written value as an error message quotes it: at most 64 characters of it."""
    t = text.strip()
    return repr(t) if len(t) <= 64 else repr(t[:64]) + f"... ({len(t):,} characters)"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


#: more significant digits than any 64-bit value has: out of range without converting them
_MAX_DIGITS = 20


def _decimal(digits: str) -> int | None:
    """The value of a string of decimal digits, leading zeros of any length read as kstrto*
    reads them; None (the kernel's overflow, ERANGE) beyond :data:`_MAX_DIGITS`
    significant digits, which Python would refuse to convert past 4,300."""
    digits = digits.lstrip("0")
    return None if len(digits) > _MAX_DIGITS else int(digits or "0")


def kstrtoul(text: str, limit: int) -> tuple[int | None, str]:
    """Parse like kstrtoul/kstrtouint (base 10): (value, "") or (None, errno)."""
    m = _NUM.match(text)
    if not m:
        return None, "EINVAL"
    value = _decimal(m.group(1))
    if value is None or value > limit:
        return None, "ERANGE"
    return value, ""


def kstrtoint(text: str) -> tuple[int | None, str]:
    m = _SNUM.match(text)
    if not m:
        return None, "EINVAL"
    value = _decimal(m.group(2))
    if value is None:
        return None, "ERANGE"
    value *= -1 if m.group(1) == "-" else 1
    if not -INT_MAX - 1 <= value <= INT_MAX:
        return None, "ERANGE"
    return value, ""


def kstrtobool(text: str) -> bool | None:
    """kstrtobool: y/Y/t/T/1 and n/N/f/F/0, on/off; anything else is an error."""
    if not text:
        return None
    c = text[0]
    if c in "yYtT1":
        return True
    if c in "nNfF0":
        return False
    if c in "oO" and len(text) > 1:
        if text[1] in "nN":
            return True
        if text[1] in "fF":
            return False
    return None


class KnobsMixin(ProcessMixin):
    def _init_knobs(self, sysfs: dict[str, Any]) -> list[str]:
        """Kernel defaults plus a scenario's ``sysfs``; returns the knobs skipped."""
        self.knobs = {k: v for k, v in DEFAULTS.items() if k in self.profile.knobs}
        self.advisor = AdvisorCtx()
        skipped = []
        for knob, value in sysfs.items():
            if knob not in self.profile.knobs:
                skipped.append(knob)
                continue
            self.sysfs_write(knob, value)
        return skipped

    def sysfs_read(self, knob: str) -> str:
        """What ``cat /sys/kernel/mm/ksm/<knob>`` prints (knobs and counters)."""
        if knob == "advisor_mode" and knob in self.knobs:
            return "[none] scan-time" if self.knobs[knob] == "none" else "none [scan-time]"
        if knob in self.knobs:
            return str(self.knobs[knob])
        counters = self.global_counters()  # type: ignore[attr-defined]
        if knob in counters and counters[knob] is not None:
            return str(counters[knob])
        raise KnobError(knob, "ENOENT", f"no such file on kernel {self.profile.version}")

    def sysfs_write(self, knob: str, value: Any) -> None:
        """Write a knob as ``echo value > /sys/kernel/mm/ksm/<knob>`` would."""
        if knob not in self.profile.knobs:
            if knob in GLOBAL_FIELDS:
                raise KnobError(knob, "EACCES", "read-only file")
            raise KnobError(knob, "ENOENT", f"no such knob on kernel {self.profile.version}")
        text = _text(value)
        if not text:
            return  # sysfs_kf_write: an empty write succeeds and changes nothing
        getattr(self, f"_store_{knob}")(knob, text)

    # ------------------------------------------------------------ stores
    def _uint(self, knob: str, text: str, limit: int = UINT_MAX) -> int:
        value, err = kstrtoul(text, limit)
        if value is None:
            raise KnobError(knob, "EINVAL", f"{_echo(text)} is not an unsigned integer")
        return value

    def _bool(self, knob: str, text: str) -> int:
        value = kstrtobool(text)
        if value is None:
            raise KnobError(knob, "EINVAL", f"{_echo(text)} is not a boolean")
        return int(value)

    def _store_run(self, knob: str, text: str) -> None:
        value = self._uint(knob, text)
        if value > 2:
            raise KnobError(knob, "EINVAL", "run takes 0 (stop), 1 (run) or 2 (unmerge all)")
        if value == self.knobs["run"]:
            return
        self.knobs["run"] = value
        if value == 2:
            self._unmerge_and_remove_all_rmap_items()

    def _store_pages_to_scan(self, knob: str, text: str) -> None:
        if self.knobs.get("advisor_mode", "none") != "none":
            raise KnobError(knob, "EINVAL", "pages_to_scan is set by the advisor (scan-time)")
        self.knobs[knob] = self._uint(knob, text)

    def _store_sleep_millisecs(self, knob: str, text: str) -> None:
        self.knobs[knob] = self._uint(knob, text)

    def _store_stable_node_chains_prune_millisecs(self, knob: str, text: str) -> None:
        self.knobs[knob] = self._uint(knob, text)

    def _store_use_zero_pages(self, knob: str, text: str) -> None:
        self.knobs[knob] = self._bool(knob, text)

    def _store_smart_scan(self, knob: str, text: str) -> None:
        self.knobs[knob] = self._bool(knob, text)

    def _store_max_page_sharing(self, knob: str, text: str) -> None:
        value, err = kstrtoint(text)
        if value is None:
            raise KnobError(knob, err, f"{_echo(text)} is not an integer")
        if value < 2:
            raise KnobError(knob, "EINVAL", "max_page_sharing must be at least 2")
        if value == self.knobs[knob]:
            return
        if self.pages_shared or self._remove_all_stable_nodes():
            raise KnobError(knob, "EBUSY", "pages are shared: unmerge them first (run=2)")
        self.knobs[knob] = value

    def _store_merge_across_nodes(self, knob: str, text: str) -> None:
        value, err = kstrtoul(text, ULONG_MAX)
        if value is None:
            raise KnobError(knob, err, f"{_echo(text)} is not an unsigned integer")
        if value > 1:
            raise KnobError(knob, "EINVAL", "merge_across_nodes takes 0 or 1")
        if value == self.knobs[knob]:
            return
        if self.pages_shared or self._remove_all_stable_nodes():
            raise KnobError(knob, "EBUSY", "pages are shared: unmerge them first (run=2)")
        self.knobs[knob] = value

    def _store_advisor_mode(self, knob: str, text: str) -> None:
        mode = text.strip()
        if mode not in ("none", "scan-time"):
            raise KnobError(knob, "EINVAL", "advisor_mode takes 'none' or 'scan-time'")
        if mode != self.knobs[knob]:
            self.knobs[knob] = mode
            # set_advisor_defaults
            if mode == "scan-time":
                self.advisor = AdvisorCtx()
            self.knobs["pages_to_scan"] = (
                self.knobs["advisor_min_pages_to_scan"] if mode == "scan-time" else 100
            )

    # ---------------------------------------------------------- the advisor
    #: the scan-time advisor's context (sim.advisor); ksmd's clock, set by a time model
    advisor: AdvisorCtx
    ksmd_ktime_ns: int = 0

    @property
    def advisor_on(self) -> bool:
        return bool(self.knobs.get("advisor_mode", "none") == "scan-time")

    def _advisor_start_scan(self) -> None:
        """advisor_start_scan, at a pass start: stamp it with ksmd's clock."""
        if self.advisor_on:
            self.advisor.start_scan_ns = self.ksmd_ktime_ns

    def _advisor_stop_scan(self) -> None:
        """advisor_stop_scan, at a pass end: the advisor runs once the driver gives the time
        (:meth:`advise`)."""
        if self.advisor_on:
            self.advisor.due = True

    def advise(self, now_ns: int, cpu_ns: int) -> int | None:
        """Run the scan-time advisor if a pass ended since the last call (``now_ns``: ksmd's
        clock at the pass end, ``cpu_ns``: ksmd's CPU time so far, task_sched_runtime).
        Returns the new pages_to_scan, or None when the advisor did not run."""
        if not self.advisor.due:
            return None
        self.advisor.due = False
        if not self.advisor_on:
            return None
        step = scan_time_advisor(
            self.advisor,
            now_ns=now_ns,
            cpu_time_ns=cpu_ns,
            pages_to_scan=int(self.knobs["pages_to_scan"]),
            target_scan_time=int(self.knobs["advisor_target_scan_time"]),
            max_cpu=int(self.knobs["advisor_max_cpu"]),
            max_pages_to_scan=int(self.knobs["advisor_max_pages_to_scan"]),
        )
        self.knobs["pages_to_scan"] = step.pages
        return step.pages

    def _store_advisor_max_cpu(self, knob: str, text: str) -> None:
        self.knobs[knob] = self._uint(knob, text, ULONG_MAX)

    def _store_advisor_min_pages_to_scan(self, knob: str, text: str) -> None:
        self.knobs[knob] = self._uint(knob, text, ULONG_MAX)

    def _store_advisor_max_pages_to_scan(self, knob: str, text: str) -> None:
        self.knobs[knob] = self._uint(knob, text, ULONG_MAX)

    def _store_advisor_target_scan_time(self, knob: str, text: str) -> None:
        value = self._uint(knob, text, ULONG_MAX)
        if value < 1:
            raise KnobError(knob, "EINVAL", "advisor_target_scan_time must be at least 1")
        self.knobs[knob] = value

    # -------------------------------------------------------------- run=2
    def _unmerge_and_remove_all_rmap_items(self) -> None:
        """run=2: unshare every KSM page (and KSM-placed zero page), free every item."""
        self._event("unmerge_all")
        for mm in list(self.slots):
            if not mm.exiting:
                for vma in mm.vmas.values():
                    if vma.anon_vma:
                        for i in range(vma.npages):
                            if vma.mergeable[i]:
                                self._break_ksm(vma, i)
            for vma in list(mm.regions):
                if vma.nitems:
                    for i in range(vma.npages):
                        if vma.it_state[i]:
                            self._free_item(vma, i)
                if vma.dead:
                    self._drop_dead_region(vma)
            if mm.exiting:
                self.slots.remove(mm)
                mm.registered = False
                mm.merge_any = False
        self._remove_all_stable_nodes()
        self.unstable.clear()
        self.cursor = None
        self.seqnr = 0
