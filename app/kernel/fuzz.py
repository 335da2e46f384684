"""Differential fuzzing: random scenarios, run in the simulator and on the real kernel.

``generate(seed, index, kernel)`` makes a random, valid, bounded ``ksm-scenario/1`` document
(deterministic for ``(seed, index)``) using every op of the format: spawn, fork, exit, mmap,
munmap, write (zero, labels, unique), read, madvise (both advices, page sub-ranges), prctl
(not on 6.1), sysfs (use_zero_pages, smart_scan, stable_node_chains_prune_millisecs, run=2,
max_page_sharing right after a run=2, an empty write), scan and checkpoint. Each scenario
belongs to one family (:data:`FAMILIES`, ``description`` names it):

* *general*: every op; ``max_page_sharing`` stays 256 with fewer than 256 pages in all, so
  no stable-node chain can form (and the prune timer is 0: no pass needs the clock);
* *shared*: several processes (spawned and forked) writing a few labels (and zero) into
  their mappings, so contents are shared across processes; no chain can form either;
* *chain*: ``max_page_sharing`` 2-5 (again after a ``run=2``), 2-4 labels plus zero, the
  pages written up front by 1-3 processes, then rewrites, forks and exits, so dups die and
  chains are pruned or collapsed; the prune interval is 0, the default 2000 ms or a
  multiple of 200 ms (the format's clock: the tree is ordered by the format's bytes and the
  replayer paces passes 200 ms apart);
* *prune*: as *chain*, with a non-zero prune interval (200-2000 ms) and 10-60 passes in
  all, so chains are pruned by the timer.

Chain and prune scenarios never write ``unique`` pages: a unique page's place in the trees
is not determined (random bytes), and a walk for one may meet a chain. A prune interval is
a multiple of 200 ms: the kernel's clock runs a little later than the format's (a pass
starts *at least* 200 ms after the previous one), which never changes which pass prunes when
the due time falls on a pass.

Every scenario is replayed on the kernel (one :class:`~.session.KernelSession` for the
whole run, or inside a qemu guest with ``kernel``) and run with ``sim.run_scenario``; a
disagreement is saved to ``out/NNNN/``: ``scenario.json``, ``kernel.json``, ``sim.json``,
``diff.txt`` and the shrunk versions (``shrunk.json``, ``shrunk-kernel.json``,
``shrunk-sim.json``, ``shrunk-diff.txt``): greedily fewer steps, then fewer pages, while it
still disagrees the same way.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sim.scenario import parse_pages, parse_scenario
from sim.trace import without_ties

Doc = dict[str, Any]
#: replays scenario documents on a kernel: one ``(trace or None, error or None)`` each
KernelRunner = Callable[[Sequence[Doc]], list[tuple[Doc | None, str | None]]]

LABELS = ("A", "B", "C")
CHAIN_LABELS = ("A", "B", "C", "D")
#: the families and their shares: chain and prune are at least a third
FAMILIES: tuple[tuple[str, float], ...] = (
    ("general", 0.4),
    ("shared", 0.2),
    ("chain", 0.22),
    ("prune", 0.18),
)
#: prune intervals drawn (ms): multiples of the format's 200 ms pass
PRUNE_MS = (200, 400, 600, 800, 1000, 1400, 2000)
MAX_PROCS = 4
MAX_MAPS = 3
MAX_MAP_PAGES = 16  # 4 procs x 3 maps x 16 = 192 < 256: no chain in general scenarios


# --------------------------------------------------------------------------------------
# generation


@dataclass
class _Gen:
    rng: random.Random
    kernel: str
    family: str
    steps: list[Doc] = field(default_factory=list)
    procs: dict[str, dict[str, int]] = field(default_factory=dict)  # live: vma -> pages
    registered: set[str] = field(default_factory=set)  # a guess, to avoid idle scans
    n_procs: int = 0
    n_maps: int = 0
    n_checkpoints: int = 0
    labels: tuple[str, ...] = LABELS
    passes: int = 0  # drawn so far
    target: int = 0  # prune family: the passes in all (10-60)

    @property
    def chain(self) -> bool:
        return self.family in ("chain", "prune")

    def add(self, step: Doc) -> None:
        self.steps.append(step)

    def pick_proc(self) -> str:
        return self.rng.choice(sorted(self.procs))

    def pick_vma(self) -> tuple[str, str] | None:
        cands = [(p, v) for p, maps in sorted(self.procs.items()) for v in sorted(maps)]
        return self.rng.choice(cands) if cands else None

    def pages(self, count: int) -> Any:
        """A page selection: whole mapping (omitted), one page, a range or a list."""
        r = self.rng.random()
        if r < 0.35 or count == 1:
            return None
        if r < 0.55:
            return self.rng.randrange(count)
        lo = self.rng.randrange(count)
        hi = self.rng.randrange(lo, count)
        if r < 0.85:
            return f"{lo}-{hi}"
        other = self.rng.randrange(count)
        return [f"{lo}-{hi}", other]

    def content(self) -> str:
        if self.chain:
            return self.rng.choice([*self.labels, *self.labels, "zero"])
        if self.family == "shared":
            return self.rng.choice([*self.labels, *self.labels, "zero", "unique"])
        return self.rng.choice(["zero", "zero", "unique", *LABELS, "A"])

    # -- ops

    def spawn(self) -> None:
        name = f"P{self.n_procs}"
        self.n_procs += 1
        self.procs[name] = {}
        self.add({"op": "spawn", "proc": name})

    def fork(self) -> None:
        parent = self.pick_proc()
        child = f"P{self.n_procs}"
        self.n_procs += 1
        self.procs[child] = dict(self.procs[parent])
        if parent in self.registered:
            self.registered.add(child)
        self.add({"op": "fork", "proc": parent, "child": child})

    def exit(self) -> None:
        proc = self.pick_proc()
        del self.procs[proc]
        self.registered.discard(proc)
        self.add({"op": "exit", "proc": proc})

    def mmap_room(self) -> list[str]:
        return sorted(p for p, maps in self.procs.items() if len(maps) < MAX_MAPS)

    def mmap(self) -> None:
        proc = self.rng.choice(self.mmap_room())
        vma = f"m{self.n_maps}"
        self.n_maps += 1
        count = self.rng.choice([1, 2, 3, 4, 6, 8, 10, 12, 16])
        self.procs[proc][vma] = count
        self.add({"op": "mmap", "proc": proc, "vma": vma, "pages": count})

    def munmap(self) -> None:
        pv = self.pick_vma()
        if pv:
            del self.procs[pv[0]][pv[1]]
            self.add({"op": "munmap", "proc": pv[0], "vma": pv[1]})

    def _paged(self, op: str, **extra: Any) -> None:
        pv = self.pick_vma()
        if not pv:
            return
        step: Doc = {"op": op, "proc": pv[0], "vma": pv[1], **extra}
        sel = self.pages(self.procs[pv[0]][pv[1]])
        if sel is not None:
            step["pages"] = sel
        self.add(step)
        if op == "madvise" and extra["advice"] == "MADV_MERGEABLE":
            self.registered.add(pv[0])

    def write(self) -> None:
        self._paged("write", content=self.content())

    def read(self) -> None:
        self._paged("read")

    def madvise(self) -> None:
        advice = "MADV_MERGEABLE" if self.rng.random() < 0.8 else "MADV_UNMERGEABLE"
        self._paged("madvise", advice=advice)

    def prctl(self) -> None:
        proc = self.pick_proc()
        value = 1 if self.rng.random() < 0.75 else 0
        if value:
            self.registered.add(proc)
        self.add({"op": "prctl", "proc": proc, "value": value})

    def sysfs(self) -> None:
        r = self.rng.random()
        if r < 0.05:  # succeeds and changes nothing (sysfs_kf_write)
            knob = self.rng.choice(["max_page_sharing", "smart_scan", "use_zero_pages"])
            self.add({"op": "sysfs", "knob": knob, "value": ""})
        elif r < 0.3:
            self.add({"op": "sysfs", "knob": "run", "value": 2})
            if self.chain and self.rng.random() < 0.5:
                self.add(
                    {
                        "op": "sysfs",
                        "knob": "max_page_sharing",
                        "value": self.rng.choice([2, 3, 4, 5]),
                    }
                )
        elif r < 0.55 and not self.chain:
            self.add({"op": "sysfs", "knob": "use_zero_pages", "value": self.rng.randrange(2)})
        elif r < 0.8:
            self.add({"op": "sysfs", "knob": "smart_scan", "value": self.rng.randrange(2)})
        elif self.family == "prune":
            value = self.rng.choice(PRUNE_MS)
            self.add({"op": "sysfs", "knob": "stable_node_chains_prune_millisecs", "value": value})
        elif self.family == "chain":
            value = self.rng.choice([0, 0, *PRUNE_MS])
            self.add({"op": "sysfs", "knob": "stable_node_chains_prune_millisecs", "value": value})
        else:  # no chain can form: the timer stays 0 (no pass needs the clock)
            self.add({"op": "sysfs", "knob": "stable_node_chains_prune_millisecs", "value": 0})

    def scan(self, passes: int | None = None) -> None:
        if passes is None:
            choices = [1, 2, 3, 5, 8] if self.family == "prune" else [1, 1, 2, 2, 3]
            passes = self.rng.choice(choices)
        if self.target:  # keep the last pass for the final scan
            passes = min(passes, self.target - 1 - self.passes)
            if passes < 1:
                return
        self.passes += passes
        self.add({"op": "scan", "passes": passes})

    def labelled_mapping(self, proc: str) -> None:
        """A mapping of ``proc`` filled page by page with the family's contents, mergeable."""
        vma = f"m{self.n_maps}"
        self.n_maps += 1
        count = self.rng.randrange(3, 11)
        self.procs[proc][vma] = count
        self.add({"op": "mmap", "proc": proc, "vma": vma, "pages": count})
        lo = 0
        while lo < count:
            hi = min(count, lo + self.rng.choice([1, 1, 2, 3]))
            sel = str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}"
            self.add(
                {"op": "write", "proc": proc, "vma": vma, "content": self.content(), "pages": sel}
            )
            lo = hi
        self.add({"op": "madvise", "proc": proc, "vma": vma, "advice": "MADV_MERGEABLE"})
        self.registered.add(proc)

    def checkpoint(self) -> None:
        self.add({"op": "checkpoint", "name": f"c{self.n_checkpoints}"})
        self.n_checkpoints += 1


def generate(seed: int, index: int, kernel: str = "6.18") -> Doc:
    """The ``index``-th random scenario of ``seed`` (the same document every time)."""
    rng = random.Random(f"ksmlab-fuzz:{seed}:{index}")
    family = rng.choices([n for n, _ in FAMILIES], [w for _, w in FAMILIES])[0]
    g = _Gen(rng, kernel, family)
    sysfs: dict[str, int] = {}
    if rng.random() < 0.5:
        sysfs["use_zero_pages"] = 1
    if rng.random() < 0.3:
        sysfs["smart_scan"] = 0
    if g.chain:
        g.labels = tuple(rng.sample(CHAIN_LABELS, rng.randrange(2, 5)))
        sysfs["max_page_sharing"] = rng.randrange(2, 6)
        if family == "prune":
            sysfs["stable_node_chains_prune_millisecs"] = rng.choice(PRUNE_MS)
            g.target = rng.randrange(10, 61)
        else:
            prune = rng.choice([0, 0, None, *PRUNE_MS])  # None: the default (2000)
            if prune is not None:
                sysfs["stable_node_chains_prune_millisecs"] = prune
    else:
        sysfs["stable_node_chains_prune_millisecs"] = 0
        if family == "shared":
            g.labels = tuple(rng.sample(CHAIN_LABELS, rng.randrange(1, 4)))
    g.spawn()
    if family == "general":
        g.mmap()
    else:
        for i in range(rng.randrange(1, 4) if g.chain else rng.randrange(2, 4)):
            if i and len(g.procs) < MAX_PROCS and rng.random() < 0.7:
                g.spawn()
            proc = f"P{g.n_procs - 1}"  # the newest process
            if len(g.procs[proc]) < MAX_MAPS:
                g.labelled_mapping(proc)
        if family == "shared" and len(g.procs) < MAX_PROCS and rng.random() < 0.6:
            g.fork()
        g.scan()
    n_steps = len(g.steps) + rng.randrange(10, 40)
    while len(g.steps) < n_steps:
        if not g.procs:
            g.spawn()
            continue
        nmaps = sum(len(m) for m in g.procs.values())
        choices: list[tuple[Callable[[], None], float]] = [
            (g.write, 6 if nmaps else 0),
            (g.madvise, 4 if nmaps else 0),
            (g.read, 1.5 if nmaps else 0),
            (g.scan, 4 if g.registered else 0.3),
            (g.checkpoint, 2),
            (g.mmap, 2 if g.mmap_room() else 0),
            (g.spawn, 1 if len(g.procs) < MAX_PROCS else 0),
            (g.fork, 1 if len(g.procs) < MAX_PROCS else 0),
            (g.exit, 0.6 if len(g.procs) > 1 else 0.1),
            (g.munmap, 0.5 if nmaps else 0),
            (g.sysfs, 1.2),
            (g.prctl, 0.8 if kernel != "6.1" else 0),
        ]
        if g.chain:  # dups die by rewrites and exits
            choices += [(g.write, 3 if nmaps else 0), (g.exit, 0.6 if len(g.procs) > 1 else 0)]
        ops, weights = zip(*choices, strict=True)
        rng.choices(ops, weights)[0]()
    while g.passes < g.target - 1:
        g.scan(min(rng.choice([2, 3, 5, 8]), g.target - 1 - g.passes))
        if rng.random() < 0.5:
            g.checkpoint()
    if g.target:
        g.target = 0
        g.scan(1)
    else:
        g.scan()
    g.checkpoint()
    return {
        "format": "ksm-scenario/1",
        "name": f"fuzz-{seed}-{index}",
        "description": f"random scenario {index} of seed {seed} (family {family})",
        "kernel": kernel,
        "sysfs": sysfs,
        "steps": g.steps,
    }


def family(doc: Doc) -> str:
    """The family a generated scenario belongs to (named at the end of its description)."""
    text = str(doc.get("description", ""))
    for name, _ in FAMILIES:
        if text.endswith(f"(family {name})"):
            return name
    return "other"


def op_kinds(doc: Doc) -> set[str]:
    """Distinct op kinds of a scenario (write contents, advices, knobs told apart)."""
    kinds = set()
    for s in doc["steps"]:
        op = s["op"]
        if op == "write":
            c = s["content"]
            kinds.add(f"write:{c if c in ('zero', 'unique') else 'label'}")
        elif op == "madvise":
            kinds.add(f"madvise:{s['advice']}")
        elif op == "sysfs":
            kinds.add(f"sysfs:{s['knob']}")
        elif op == "prctl":
            kinds.add(f"prctl:{s['value']}")
        else:
            kinds.add(op)
    return kinds


# --------------------------------------------------------------------------------------
# running and comparing


@dataclass
class Outcome:
    kind: str  # "agree", "tied", "late", "diff", "sim-error", "kernel-error"
    kernel: Doc | None
    sim: Doc | None
    diffs: list[str]

    @property
    def agrees(self) -> bool:
        return self.kind == "agree"


def run_sim(doc: Doc) -> tuple[Doc | None, str | None]:
    from sim import run_scenario

    try:
        return run_scenario(parse_scenario(doc)), None
    except Exception as exc:  # noqa: BLE001 - a simulator crash is a finding
        return None, f"{type(exc).__name__}: {exc}"


def judge(doc: Doc, kernel: tuple[Doc | None, str | None]) -> Outcome:
    from sim.trace import compare_traces

    ktrace, kerr = kernel
    strace, serr = run_sim(doc)
    if ktrace is None:
        return Outcome("kernel-error", None, strace, [f"kernel: {kerr}"])
    if strace is None:
        return Outcome("sim-error", ktrace, None, [f"simulator: {serr}"])
    diffs = compare_traces(ktrace, strace)
    if diffs:
        tied = without_ties(ktrace, strace)
        if tied is not None and not tied:
            return Outcome("tied", ktrace, strace, diffs)
        diffs = diffs + gave_up_notes(ktrace)
        ahead = clock_ahead_ms(ktrace)
        if ahead >= CLOCK_SLACK_MS:
            note = (
                f"note: the kernel's clock ran {ahead:.0f} ms ahead of the format's (the "
                "steps between scans took that much longer than the 200 ms gaps)"
            )
            return Outcome("late", ktrace, strace, [*diffs, note])
    return Outcome("diff" if diffs else "agree", ktrace, strace, diffs)


#: a paced replay whose passes started this much later than the format's clock, in all,
#: may have let a prune timer fall due a pass early (docs/replayer.md, "Pacing")
CLOCK_SLACK_MS = 100.0
#: replays of a scenario that disagreed while its replay was late, before it is counted apart
LATE_RETRIES = 2


def clock_ahead_ms(ktrace: Doc) -> float:
    """How far a paced replay's clock ran ahead of the format's: the sum of its scans'
    ``late_ms`` (0 when unpaced: no clock is read)."""
    meta = ktrace.get("meta", {})
    if not meta.get("pacing", {}).get("pass_gap_ms"):
        return 0.0
    return float(sum(scan.get("late_ms") or 0.0 for scan in meta.get("scans", [])))


def gave_up_notes(ktrace: Doc) -> list[str]:
    """The kernel trace's scans that ended before their passes (``meta.scans[].gave_up``):
    right when nothing was registered, a replay fault otherwise (a ksmd wake-up lost in a
    loaded guest); listed after a disagreement's differences, for the one who reads it."""
    return [
        f"note: the replayer gave up on the scan of step {scan.get('step')} after "
        f"{scan.get('full_scans_after', 0) - scan.get('full_scans_before', 0)} of "
        f"{scan.get('passes')} passes (ksmd asleep, no progress)"
        for scan in ktrace.get("meta", {}).get("scans", [])
        if scan.get("gave_up")
    ]


def host_runner(session: Any) -> KernelRunner:
    """Replays on this machine's kernel, in an open :class:`~.session.KernelSession`."""
    from .ops import ReplayFailed, replay
    from .session import Unsupported

    def run(docs: Sequence[Doc]) -> list[tuple[Doc | None, str | None]]:
        out: list[tuple[Doc | None, str | None]] = []
        for doc in docs:
            try:
                out.append((replay(session, parse_scenario(doc)), None))
            except (ReplayFailed, Unsupported) as exc:
                out.append((None, f"{type(exc).__name__}: {exc}"))
        return out

    return run


def guest_runner(version: str) -> KernelRunner:
    """Replays in a qemu guest booted on Debian's ``version`` kernel (one boot per batch)."""
    from . import qemu

    def run(docs: Sequence[Doc]) -> list[tuple[Doc | None, str | None]]:
        results = qemu.replay_many_in_guest(list(docs), version)
        return [
            (r.trace, None)
            if r.status == 0 and r.trace is not None
            else (None, f"status {r.status}: {r.stderr.strip()[-300:]}")
            for r in results
        ]

    return run


# --------------------------------------------------------------------------------------
# shrinking


def _valid(doc: Doc) -> bool:
    try:
        parse_scenario(doc)
    except Exception:  # noqa: BLE001 - an invalid candidate is simply skipped
        return False
    return any(s["op"] == "checkpoint" for s in doc["steps"])


def _without(doc: Doc, index: int) -> Doc:
    return _drop(doc, {index})


def _drop(doc: Doc, indexes: set[int]) -> Doc:
    return {**doc, "steps": [s for i, s in enumerate(doc["steps"]) if i not in indexes]}


def _page_count(doc: Doc) -> int:
    return sum(int(s["pages"]) for s in doc["steps"] if s["op"] == "mmap")


def _shrink_mapping(doc: Doc, index: int) -> Doc | None:
    """Halve the mmap at ``index``; clip (or drop) the page selections that used it."""
    mm = doc["steps"][index]
    new = max(1, int(mm["pages"]) // 2)
    if new == int(mm["pages"]):
        return None
    steps: list[Doc] = []
    owners = {mm["proc"]}
    for i, s in enumerate(doc["steps"]):
        s = dict(s)
        if i == index:
            s["pages"] = new
        elif i > index and s["op"] == "fork" and s["proc"] in owners:
            owners.add(s["child"])
        elif (
            i > index
            and s.get("vma") == mm["vma"]
            and s.get("proc") in owners
            and "pages" in s
            and s["op"] != "mmap"
        ):
            try:
                ranges = parse_pages(s["pages"], 1 << 30)
            except Exception:  # noqa: BLE001
                return None
            clipped = [(lo, min(hi, new)) for lo, hi in ranges if lo < new]
            if not clipped:
                continue
            s["pages"] = [f"{lo}-{hi - 1}" for lo, hi in clipped]
        steps.append(s)
    return {**doc, "steps": steps}


def shrink(
    doc: Doc,
    still: Callable[[Sequence[Doc]], list[bool]],
    batch: bool = False,
    budget: int = 400,
) -> Doc:
    """Greedily drop steps, halve mappings, drop initial knobs while it still disagrees.

    One by one (``batch=False``): every step, last to first, is dropped if the rest still
    disagrees; then each mapping is halved and each initial knob dropped; rounds repeat
    until nothing changes. ``batch=True`` (one qemu boot per round) evaluates a round's
    candidates at once and keeps all the successful step removals together if that still
    disagrees (the largest valid combination of them), else the smallest one. ``budget``
    bounds the number of replays.
    """
    spent = 0

    def ok(cands: list[Doc]) -> list[bool]:
        nonlocal spent
        spent += len(cands)
        return still(cands)

    def others(cur: Doc) -> list[Doc]:
        out = []
        for i, s in enumerate(cur["steps"]):
            if s["op"] == "mmap":
                c = _shrink_mapping(cur, i)
                if c is not None and _valid(c):
                    out.append(c)
        for knob in sorted(cur.get("sysfs", {})):  # back to the default value
            out.append({**cur, "sysfs": {k: v for k, v in cur["sysfs"].items() if k != knob}})
        return out

    cur = doc
    progress = True
    while progress and spent < budget:
        progress = False
        if batch:
            drops = [i for i in range(len(cur["steps"])) if _valid(_without(cur, i))]
            cands = [_without(cur, i) for i in drops] + others(cur)
            cands = cands[: max(0, budget - spent)]
            good = [c for c, g in zip(cands, ok(cands), strict=True) if g]
            dropped = {i for i, c in zip(drops, cands, strict=False) if c in good}
            chosen: set[int] = set()
            for i in sorted(dropped, reverse=True):  # the largest valid combination
                if _valid(_drop(cur, chosen | {i})):
                    chosen.add(i)
            if len(chosen) > 1 and ok([_drop(cur, chosen)])[0]:
                cur, progress = _drop(cur, chosen), True
                continue
            if good:
                cur = min(
                    good, key=lambda d: (len(d["steps"]), _page_count(d), len(d.get("sysfs", {})))
                )
                progress = True
            continue
        i = len(cur["steps"]) - 1
        while i >= 0 and spent < budget:
            c = _without(cur, i)
            if _valid(c) and ok([c])[0]:
                cur, progress = c, True
            i -= 1
        for c in others(cur):
            if spent >= budget:
                break
            if ok([c])[0]:
                cur, progress = c, True
                break  # the other candidates were computed for the old document
    return cur


# --------------------------------------------------------------------------------------
# the fuzz run


@dataclass
class FuzzResult:
    agree: int = 0
    disagree: int = 0
    tied: int = 0  # agree except on pages userspace cannot classify (counted apart)
    late: int = 0  # disagree, but every replay ran the clock ahead (counted apart)
    retried: list[int] = field(default_factory=list)  # agreed once replayed on time
    kinds: set[str] = field(default_factory=set)
    failures: list[dict[str, Any]] = field(default_factory=list)
    families: dict[str, int] = field(default_factory=dict)  # scenarios per family
    seconds: float = 0.0  # the whole run, shrinking included

    @property
    def family_line(self) -> str:
        total = max(1, sum(self.families.values()))
        parts = [f"{n} {c} ({100 * c / total:.0f}%)" for n, c in self.families.items()]
        chains = self.families.get("chain", 0) + self.families.get("prune", 0)
        return f"families: {', '.join(parts)}; chain+prune {100 * chains / total:.0f}%"

    @property
    def summary(self) -> str:
        tied = f", {self.tied} agree only up to ties userspace cannot see" if self.tied else ""
        late = (
            f", {self.late} disagree only where the replay could not keep the format's clock"
            if self.late
            else ""
        )
        again = (
            f" ({len(self.retried)} on a second replay: the first ran the clock ahead)"
            if self.retried
            else ""
        )
        return f"{self.agree} agree{again}, {self.disagree} disagree{tied}{late}"


def _dump(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def _save(d: Path, doc_name: str, prefix: str, doc: Doc, outcome: Outcome) -> None:
    """One scenario with its outcome: ``doc_name``, ``{prefix}kernel.json``,
    ``{prefix}sim.json`` (when there is one) and ``{prefix}diff.txt``."""
    d.mkdir(parents=True, exist_ok=True)
    _dump(d / doc_name, doc)
    for name, trace in (("kernel.json", outcome.kernel), ("sim.json", outcome.sim)):
        if trace is not None:
            _dump(d / f"{prefix}{name}", trace)
    (d / f"{prefix}diff.txt").write_text("\n".join(outcome.diffs) + "\n", encoding="utf-8")


def save_failure(
    out: Path, index: int, doc: Doc, outcome: Outcome, small: Doc, small_outcome: Outcome
) -> Path:
    d = out / f"{index:04d}"
    _save(d, "scenario.json", "", doc, outcome)
    _save(d, "shrunk.json", "shrunk-", small, small_outcome)
    return d


def save_tie(out: Path, index: int, doc: Doc, outcome: Outcome, suffix: str = "tied") -> Path:
    """``out/NNNN-tied/``: scenario, both traces, the differences on the tied pages (and
    ``NNNN-late/`` for a scenario whose every replay ran the clock ahead)."""
    d = out / f"{index:04d}-{suffix}"
    _save(d, "scenario.json", "", doc, outcome)
    return d


class Progress:
    """A one-line progress bar on a terminal (nothing otherwise)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()

    def show(self, done: int, result: FuzzResult, note: str = "") -> None:
        if not self.tty:
            return
        width = 30
        fill = int(width * done / max(1, self.total))
        rate = done / max(1e-9, time.monotonic() - self.t0)
        self.stream.write(
            f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{self.total}  "
            f"{result.agree} agree, {result.disagree} disagree  "
            f"{rate:.1f}/s {note[:30]:<30}"
        )
        self.stream.flush()

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def fuzz(
    runner: KernelRunner,
    *,
    count: int,
    seed: int,
    out: Path | None,
    kernel: str = "6.18",
    batch: bool = False,
    shrink_budget: int = 400,
    on_failure: Callable[[int, Outcome, Path | None], None] | None = None,
    on_found: Callable[[int, Outcome], None] | None = None,
    progress: Progress | None = None,
) -> FuzzResult:
    """Generate ``count`` scenarios, compare kernel and simulator, save disagreements."""
    t0 = time.monotonic()
    result = FuzzResult()
    docs = [generate(seed, i, kernel) for i in range(count)]
    result.families = {name: 0 for name, _ in FAMILIES}
    for doc in docs:
        result.kinds |= op_kinds(doc)
        fam = family(doc)
        result.families[fam] = result.families.get(fam, 0) + 1
    chunk = count if batch else 1
    done = 0
    for start in range(0, count, chunk):
        part = docs[start : start + chunk]
        for offset, (doc, ktrace) in enumerate(zip(part, runner(part), strict=True)):
            index = start + offset
            outcome = judge(doc, ktrace)
            for _ in range(LATE_RETRIES if outcome.kind == "late" else 0):
                if progress:
                    progress.show(done, result, f"replaying #{index} (late)")
                outcome = judge(doc, runner([doc])[0])
                if outcome.kind != "late":
                    if outcome.agrees:
                        result.retried.append(index)
                    break
            done += 1
            if outcome.agrees:
                result.agree += 1
            elif outcome.kind == "tied":
                result.tied += 1
                if out is not None:  # kept for a look, not shrunk: nothing is wrong
                    save_tie(out, index, doc, outcome)
            elif outcome.kind == "late":
                result.late += 1
                if out is not None:  # not shrunk: shrinking needs a replay that keeps time
                    save_tie(out, index, doc, outcome, "late")
            else:
                result.disagree += 1
                if on_found:
                    on_found(index, outcome)
                if progress:
                    progress.show(done, result, f"shrinking #{index}")
                kind = outcome.kind

                def still(cands: Sequence[Doc], kind: str = kind) -> list[bool]:
                    return [
                        judge(c, k).kind == kind for c, k in zip(cands, runner(cands), strict=True)
                    ]

                small = shrink(doc, still, batch=batch, budget=shrink_budget)
                small_outcome = outcome if small is doc else judge(small, runner([small])[0])
                where = (
                    save_failure(out, index, doc, outcome, small, small_outcome)
                    if out is not None
                    else None
                )
                result.failures.append(
                    {
                        "index": index,
                        "name": doc["name"],
                        "kind": kind,
                        "dir": str(where) if where else None,
                        "shrunk_steps": len(small["steps"]),
                        "diffs": small_outcome.diffs[:10],
                    }
                )
                if on_failure:
                    on_failure(index, small_outcome, where)
            if progress:
                progress.show(done, result)
    result.seconds = round(time.monotonic() - t0, 1)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _dump(
            out / "summary.json",
            {
                "seed": seed,
                "count": count,
                "kernel": kernel,
                "agree": result.agree,
                "disagree": result.disagree,
                "tied": result.tied,
                "late": result.late,
                "retried": result.retried,
                "op_kinds": sorted(result.kinds),
                "families": result.families,
                "seconds": result.seconds,
                "failures": result.failures,
            },
        )
    return result
