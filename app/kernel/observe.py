"""Observation: what a checkpoint of a replay records, read from the kernel.

A checkpoint (``ksm-trace/1``) holds the global counters (``full_scans``, ``pages_scanned``,
``pages_skipped`` as the increase since the scenario started), ``/proc/PID/ksm_stat`` of
every live process in creation order (``/proc/PID/ksm_merging_pages`` before 6.4; missing
fields null) and one token per page of every live mapping, from ``/proc/PID/pagemap`` and
``/proc/kpageflags``: ``-`` not present, ``Z`` the zero page, ``K<n>`` a KSM page (``n``
numbers the KSM frames in order of first sight), ``A`` any other page.

Where ``KPF_KSM`` is unreliable (6.10-era kernels such as 6.12: set on every anonymous page,
as the session's probe shows) a page is ``K`` when it is anonymous and ``PG_dirty``,
narrowed by smaps' ``KSM:`` counts (:mod:`.host.frames`); every mapping's ``K`` count is
checked against smaps ``KSM:`` (``meta.warnings``). :class:`Observer` keeps the figures of
``meta.page_classification``. Reading never writes; a vanished worker raises
:class:`~.host.procfs.ProcessGone`, which the replay turns into a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .host.frames import dirty_anon, has_ksm_bit, is_zero_page, solve_dirty_rule
from .host.procfs import KPF_ANON_EXCLUSIVE, PM_PFN_MASK, PM_PRESENT, ProcFs, SmapsVma
from .sysfs import COUNTERS, CUMULATIVE, KsmSysfs
from .worker import PAGE, WorkerHandle

#: a mapping's pagemap entries and the kpageflags of its present frames
Pages = tuple[list[int], dict[int, int]]


@dataclass
class Proc:
    """A live scenario process: its worker and its mappings."""

    name: str
    handle: WorkerHandle
    maps: dict[str, tuple[int, int]] = field(default_factory=dict)  # vma -> (addr, pages)
    merge_any: bool = False


class Observer:
    """Reads the checkpoints of one replay; ``warnings`` is the replay's list (appended to)."""

    def __init__(
        self,
        sysfs: KsmSysfs,
        proc: ProcFs,
        classification: dict[str, Any],
        warnings: list[str],
    ) -> None:
        self.sysfs = sysfs
        self.proc = proc
        self.probe = classification  # the session's probe (kpf_ksm_reliable, anon_exclusive)
        self.reliable = bool(classification.get("kpf_ksm_reliable"))
        self.warnings = warnings
        self.proc_sources: dict[str, str] = {}
        self.smaps_checks = 0
        self.dirty_disagreements = 0
        self.dirty_rule_resolved = 0
        self.ambiguous: list[dict[str, Any]] = []

    def classification(self) -> dict[str, Any]:
        """``meta.page_classification``: the probe and what the checkpoints showed."""
        out = dict(self.probe)
        if self.reliable:
            out["dirty_rule_disagreements"] = self.dirty_disagreements
        else:
            out["dirty_rule_resolved_by_smaps"] = self.dirty_rule_resolved
            out["ambiguous_pages"] = self.ambiguous
        out["smaps_checks"] = self.smaps_checks
        return out

    def global_counters(self, base: dict[str, int | None]) -> dict[str, int | None]:
        """The trace's global counters; the cumulative ones as the increase over ``base``."""
        counters = self.sysfs.counters()
        glob: dict[str, int | None] = {}
        for name in COUNTERS:
            value = counters[name]
            if name in CUMULATIVE and value is not None:
                value -= base.get(name) or 0
            glob[name] = value
        return glob

    def proc_fields(self, p: Proc) -> dict[str, int | bool | None]:
        """A process's ``ksm_stat`` fields (noting where a field came from otherwise)."""
        fields, sources = self.proc.proc_fields(p.handle.pid)
        self.proc_sources.update(sources)
        return fields

    def read_pages(self, p: Proc) -> dict[str, Pages]:
        """pagemap entries and kpageflags of every scenario mapping of a worker."""
        out = {}
        for vma, (addr, count) in p.maps.items():
            entries = self.proc.pagemap(p.handle.pid, addr, count, PAGE)
            pfns = [e & PM_PFN_MASK for e in entries if e & PM_PRESENT]
            out[vma] = (entries, self.proc.kpageflags(pfns))
        return out

    def read(
        self, procs: dict[str, Proc]
    ) -> tuple[dict[str, dict[str, Pages]], dict[str, list[SmapsVma]]]:
        """Every worker's pages and smaps (each read once per checkpoint)."""
        raw = {name: self.read_pages(p) for name, p in procs.items()}
        smaps = {name: self.proc.smaps(p.handle.pid) for name, p in procs.items()}
        return raw, smaps

    def solve_dirty_rule(
        self,
        procs: dict[str, Proc],
        raw: dict[str, dict[str, Pages]],
        smaps: dict[str, list[SmapsVma]],
    ) -> tuple[set[int], set[int]] | None:
        """When KPF_KSM is unreliable: which frames are KSM pages, and which cannot be told.

        The dirty rule (anonymous and PG_dirty) also catches an ordinary page whose PTE
        dirty bit went to the folio when ksmd write-protected it while it was shared
        copy-on-write, and then merged only the other process's mapping. smaps' ``KSM:``
        line counts each VMA's KSM pages exactly, so the rule's candidates are narrowed to
        the assignments that meet every mapping's count. Candidates mapped by the same
        numbers of PTEs in the same mappings are interchangeable: when the counts allow
        some but not all of them to be KSM, userspace cannot tell which (a KSM frame and a
        left-over copy-on-write frame each mapped once, after the process sharing them
        exited); the first ones are taken and all are reported as ambiguous.

        Returns ``(ksm, ambiguous)`` frames, or None when KPF_KSM is reliable, smaps has no
        ``KSM:`` line or no assignment meets the counts (then the plain rule is kept;
        :meth:`check_smaps` warns).
        """
        if self.reliable:
            return None
        # a KSM page is never PageAnonExclusive (if the probe showed the bit is exported)
        exclusive = 1 << KPF_ANON_EXCLUSIVE if self.probe.get("anon_exclusive") else 0
        allowed: dict[tuple[str, str], tuple[int, int]] = {}
        pages: list[tuple[tuple[str, str], int, int]] = []
        for name, p in procs.items():
            vmas = smaps[name]
            if any(v.ksm_kb is None for v in vmas):
                return None
            for vma, (addr, count) in p.maps.items():
                end = addr + count * PAGE
                key = (name, vma)
                n = sum(v.ksm_kb or 0 for v in vmas if addr <= v.start < end) * 1024 // PAGE
                allowed[key] = (n, n)
                entries, flags = raw[name][vma]
                pages.extend((key, e, flags.get(e & PM_PFN_MASK, 0)) for e in entries)
        solved = solve_dirty_rule(pages, allowed, exclusive)
        if solved is None:
            return None
        ksm, ambiguous, candidates = solved
        if len(ksm) != candidates:
            self.dirty_rule_resolved += 1
        return ksm, ambiguous

    def page_tokens(
        self,
        p: Proc,
        knum: dict[int, int],
        where: str,
        checkpoint: int,
        raw: dict[str, Pages],
        solved: tuple[set[int], set[int]] | None,
        vmas: list[SmapsVma],
    ) -> dict[str, str]:
        """One token per page of each mapping (``knum`` numbers KSM frames across the
        checkpoint's processes); ambiguous pages noted, counts checked against smaps."""
        out: dict[str, str] = {}
        counts: dict[str, int] = {}
        for vma in p.maps:
            entries, flags = raw[vma]
            tokens = []
            tied: list[int] = []
            for i, e in enumerate(entries):
                if not e & PM_PRESENT:
                    tokens.append("-")
                    continue
                pfn = e & PM_PFN_MASK
                f = flags.get(pfn, 0)
                by_dirty = dirty_anon(f)
                if is_zero_page(f):
                    tokens.append("Z")
                    continue
                ksm = has_ksm_bit(f) if self.reliable else by_dirty
                if solved is not None:
                    ksm = pfn in solved[0]
                    if pfn in solved[1]:
                        tied.append(i)
                if self.reliable and ksm != by_dirty:
                    self.dirty_disagreements += 1
                if ksm:
                    n = knum.setdefault(pfn, len(knum))
                    tokens.append(f"K{n}")
                else:
                    tokens.append("A")
            out[vma] = " ".join(tokens)
            counts[vma] = sum(1 for t in tokens if t.startswith("K"))
            if tied:
                self.ambiguous.append(
                    {
                        "checkpoint": checkpoint,
                        "name": where,
                        "proc": p.name,
                        "vma": vma,
                        "pages": tied,
                    }
                )
        self.check_smaps(p, counts, where, vmas)
        return out

    def check_smaps(
        self, p: Proc, counts: dict[str, int], where: str, vmas: list[SmapsVma]
    ) -> None:
        """K tokens against smaps ``KSM:``; no VMA but scenario mappings may be mergeable."""
        spans = [(a, a + n * PAGE) for a, n in p.maps.values()]
        strays = [
            v for v in vmas if v.mergeable and not any(lo <= v.start < hi for lo, hi in spans)
        ]
        if strays:
            self.warnings.append(
                f"checkpoint {where!r}: {p.name} has mergeable VMAs that are "
                f"not scenario mappings: "
                + ", ".join(f"{v.start:#x}-{v.end:#x}" for v in strays[:4])
            )
        if not p.maps or any(v.ksm_kb is None for v in vmas):
            return  # no KSM: line before 6.6
        self.smaps_checks += 1
        for vma, (addr, count) in p.maps.items():
            end = addr + count * PAGE
            kb = sum(v.ksm_kb or 0 for v in vmas if addr <= v.start < end)
            if kb * 1024 != counts[vma] * PAGE:
                self.warnings.append(
                    f"checkpoint {where!r}: {p.name}.{vma}: {counts[vma]} K "
                    f"pages but smaps says KSM: {kb} kB"
                )
