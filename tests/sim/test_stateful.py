"""Hypothesis stateful tests: random operation sequences on every kernel profile, with the
invariant checker after every rule (contents preserved, counters equal a recomputation,
map counts equal the page tables), plus determinism of clones."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sim import Kernel, KnobError, check_invariants

LABELS = st.sampled_from(["zero", "zero", "A", "A", "B", "unique"])
NAMES = ["P", "Q", "R", "S", "T"]


class KsmMachine(RuleBasedStateMachine):
    kernel = "6.18"

    def __init__(self) -> None:
        super().__init__()
        self.k = Kernel(self.kernel, {"use_zero_pages": 1, "pages_to_scan": 7})
        self.twin = Kernel(self.kernel, {"use_zero_pages": 1, "pages_to_scan": 7})
        self.ops: list[tuple[str, tuple[object, ...]]] = []
        self.counter = 0

    def do(self, name: str, *args: object) -> None:
        """Apply to the kernel and to a twin, to check determinism."""
        for k in (self.k, self.twin):
            try:
                getattr(k, name)(*args)
            except KnobError:
                pass

    # ----------------------------------------------------------------- helpers
    def procs(self) -> list[str]:
        return sorted(self.k.procs)

    def vmas(self) -> list[tuple[str, str]]:
        return [(p, v) for p in self.procs() for v in self.k.procs[p].vmas]

    # ------------------------------------------------------------------- rules
    @precondition(lambda self: len(self.k.procs) < 4)
    @rule()
    def spawn(self) -> None:
        self.counter += 1
        self.do("spawn", f"p{self.counter}")

    @precondition(lambda self: 0 < len(self.k.procs) < 4)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        parent = data.draw(st.sampled_from(self.procs()))
        self.counter += 1
        self.do("fork", parent, f"p{self.counter}")

    @precondition(lambda self: len(self.k.procs) > 0)
    @rule(data=st.data())
    def exit(self, data: st.DataObject) -> None:
        self.do("exit", data.draw(st.sampled_from(self.procs())))

    @precondition(lambda self: len(self.k.procs) > 0)
    @rule(data=st.data(), n=st.integers(1, 8))
    def mmap(self, data: st.DataObject, n: int) -> None:
        proc = data.draw(st.sampled_from(self.procs()))
        self.counter += 1
        self.do("mmap", proc, f"v{self.counter}", n)

    @precondition(lambda self: len(self.vmas()) > 0)
    @rule(data=st.data())
    def munmap(self, data: st.DataObject) -> None:
        self.do("munmap", *data.draw(st.sampled_from(self.vmas())))

    def _range(self, data: st.DataObject) -> tuple[str, str, tuple[tuple[int, int], ...]]:
        proc, vma = data.draw(st.sampled_from(self.vmas()))
        n = self.k.vma(proc, vma).npages
        lo = data.draw(st.integers(0, n - 1))
        hi = data.draw(st.integers(lo + 1, n))
        return proc, vma, ((lo, hi),)

    @precondition(lambda self: len(self.vmas()) > 0)
    @rule(data=st.data(), content=LABELS)
    def write(self, data: st.DataObject, content: str) -> None:
        self.do("write", *self._range(data), content)

    @precondition(lambda self: len(self.vmas()) > 0)
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        self.do("read", *self._range(data))

    @precondition(lambda self: len(self.vmas()) > 0)
    @rule(data=st.data(), advice=st.sampled_from(["MADV_MERGEABLE"] * 3 + ["MADV_UNMERGEABLE"]))
    def madvise(self, data: st.DataObject, advice: str) -> None:
        self.do("madvise", *self._range(data), advice)

    @precondition(lambda self: len(self.k.procs) > 0 and self.k.profile.has_prctl)
    @rule(data=st.data(), value=st.sampled_from([1, 1, 0]))
    def prctl(self, data: st.DataObject, value: int) -> None:
        self.do("prctl", data.draw(st.sampled_from(self.procs())), value)

    @rule(
        knob=st.sampled_from(
            [
                "use_zero_pages",
                "max_page_sharing",
                "smart_scan",
                "stable_node_chains_prune_millisecs",
                "run",
                "pages_to_scan",
            ]
        ),
        value=st.integers(0, 4),
    )
    def sysfs(self, knob: str, value: int) -> None:
        if knob not in self.k.profile.knobs:
            return
        if knob == "stable_node_chains_prune_millisecs":
            value = 0 if value < 2 else 2000
        if knob == "pages_to_scan":
            value = value * 3 + 1
        self.do("sysfs_write", knob, value)

    @rule(grain=st.sampled_from(["page", "batch", "pass", "pass", "scan2"]))
    def scan(self, grain: str) -> None:
        if grain == "page":
            self.do("scan_page")
        elif grain == "batch":
            self.do("scan_batch")
        elif grain == "pass":
            self.do("scan_pass")
        else:
            self.do("scan", 2)

    @rule()
    def clone_round_trip(self) -> None:
        clone = self.k.clone()
        assert clone.checkpoint("c") == self.k.checkpoint("c")
        clone.scan(1)
        check_invariants(clone)

    # -------------------------------------------------------------- invariants
    @invariant()
    def invariants_hold(self) -> None:
        check_invariants(self.k)

    @invariant()
    def deterministic(self) -> None:
        assert self.k.checkpoint("x") == self.twin.checkpoint("x")


SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class Machine618(KsmMachine):
    kernel = "6.18"


class Machine612(KsmMachine):
    kernel = "6.12"


class Machine65(KsmMachine):
    kernel = "6.5"


class Machine61(KsmMachine):
    kernel = "6.1"


TestKsm618 = Machine618.TestCase
TestKsm618.settings = SETTINGS
TestKsm612 = Machine612.TestCase
TestKsm612.settings = settings(SETTINGS, max_examples=25)
TestKsm65 = Machine65.TestCase
TestKsm65.settings = SETTINGS
TestKsm61 = Machine61.TestCase
TestKsm61.settings = settings(SETTINGS, max_examples=25)
