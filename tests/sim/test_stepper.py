"""The scenario stepper: typed actions in, outcomes (sentence + structured facts) out."""

from __future__ import annotations

from typing import Any

import pytest

from sim import Kernel, KnobError, ScenarioError, run_scenario
from sim.presets import load_preset, preset_names
from sim.scenario import parse_scenario
from sim.stepper import GRAINS, Inject, Next, Outcome, Stepper, WriteKnob, validate_op


def stepper(steps: list[dict[str, Any]], kernel: str = "6.18", **sysfs: Any) -> Stepper:
    sc = parse_scenario({"kernel": kernel, "sysfs": sysfs, "steps": steps})
    return Stepper(Kernel(kernel, sc.sysfs, record=True), sc.steps)


def run(st: Stepper, grain: str = "batch") -> list[Outcome]:
    out = []
    while (o := st.feed(Next(grain))) is not None:  # type: ignore[arg-type]
        out.append(o)
    return out


STORY = [
    {"op": "spawn", "proc": "A"},
    {"op": "mmap", "proc": "A", "vma": "heap", "pages": 4},
    {"op": "write", "proc": "A", "vma": "heap", "pages": "0-3", "content": "x"},
    {"op": "madvise", "proc": "A", "vma": "heap", "advice": "MADV_MERGEABLE"},
    {"op": "sysfs", "knob": "pages_to_scan", "value": "many"},
    {"op": "sysfs", "knob": "smart_scan", "value": 0},
    {"op": "checkpoint", "name": "before"},
    {"op": "scan", "passes": 1},
]


def test_each_step_says_what_it_did_in_words_and_in_facts() -> None:
    st = stepper(STORY, kernel="6.5", pages_to_scan=2)
    outs = run(st)
    assert [o.text for o in outs] == [
        "spawn A",
        "mmap A heap 4 pages",
        "write A heap[0-3] 'x'",
        "madvise A heap MADV_MERGEABLE",
        "sysfs pages_to_scan=many: rejected, EINVAL: 'many' is not an unsigned integer",
        "sysfs smart_scan=0: skipped, kernel 6.5 has no such knob",
        "checkpoint 'before'",
        "scan 1: ksmd scanned 2 pages",
        "ksmd scanned 2 pages",
        "ksmd found no page left in this pass",
    ]
    w = [o.what for o in outs]
    assert w[0] == {"kind": "op", "op": "spawn", "proc": "A", "result": "ok", "step": 0}
    assert w[1] == {
        "kind": "op",
        "op": "mmap",
        "proc": "A",
        "vma": "heap",
        "count": 4,
        "result": "ok",
        "step": 1,
    }
    assert w[2]["pages"] == [[0, 4]] and w[2]["content"] == "x"
    assert "pages" not in w[3] and w[3]["advice"] == "MADV_MERGEABLE"  # the whole mapping
    assert (
        w[4]["result"] == "rejected"
        and w[4]["errno"] == "EINVAL"
        and w[4]["knob"] == ("pages_to_scan")
    )
    assert isinstance(outs[4].error, KnobError)
    assert w[5]["result"] == "skipped" and w[5]["reason"] == "kernel 6.5 has no such knob"
    assert w[6] == {"kind": "checkpoint", "name": "before", "step": 6}
    assert outs[6].checkpoint == "before" and outs[5].checkpoint is None
    assert w[7] == {
        "kind": "op",
        "op": "scan",
        "passes": 1,
        "step": 7,
        "result": "ok",
        "grain": "batch",
        "scanned": 2,
        "pass_end": False,
    }
    assert w[8] == {"kind": "ksmd", "grain": "batch", "scanned": 2, "pass_end": False}
    assert w[9] == {"kind": "ksmd", "grain": "batch", "scanned": 0, "pass_end": True}
    # the scan is over: ksmd stopped (run=0), nothing can happen any more
    assert st.kernel.knobs["run"] == 0 and not st.scanning and st.at_end
    assert st.feed(Next()) is None


def test_a_failed_op_keeps_its_error_and_changes_nothing() -> None:
    st = stepper([{"op": "spawn", "proc": "A"}], kernel="6.1")
    run(st)
    before = st.kernel.checkpoint("s")
    out = st.feed(Inject(validate_op(st.kernel, {"op": "prctl", "proc": "A", "value": 1})))
    assert out is not None and out.what["result"] == "failed" and out.error is not None
    assert (
        out.text == f"prctl A 1: failed: {out.error}" == f"prctl A 1: failed: {out.what['reason']}"
    )
    assert "step" not in out.what  # an injected op is no scenario step
    assert st.kernel.checkpoint("s") == before


def test_knob_writes_and_injected_ops_make_more_steps_possible() -> None:
    st = stepper([{"op": "spawn", "proc": "A"}])
    run(st)
    assert st.at_end
    for raw in (
        {"op": "mmap", "proc": "A", "vma": "v", "pages": 3},
        {"op": "write", "proc": "A", "vma": "v", "content": "x"},
        {"op": "madvise", "proc": "A", "vma": "v", "advice": "MADV_MERGEABLE"},
    ):
        out = st.feed(Inject(validate_op(st.kernel, raw)))
        assert out is not None and out.what["result"] == "ok"
    assert st.at_end  # run=0
    out = st.feed(WriteKnob("run", 1))
    assert out == Outcome(
        "sysfs run=1", {"kind": "knob", "knob": "run", "value": 1, "result": "ok"}
    )
    assert not st.at_end
    nxt = st.feed(Next("pass"))
    assert nxt is not None and nxt.text == "ksmd ran to the end of the pass"
    assert nxt.what == {"kind": "ksmd", "grain": "pass", "scanned": 3, "pass_end": True}
    with pytest.raises(KnobError):
        st.feed(WriteKnob("run", 7))


def test_an_injected_scan_runs_like_a_scenario_one() -> None:
    st = stepper(STORY[:4], pages_to_scan=3)
    run(st)
    out = st.feed(Inject(validate_op(st.kernel, {"op": "scan", "passes": 2})))
    assert out is not None and out.text == "scan 2: ksmd scanned 3 pages" and st.scanning
    assert st.kernel.knobs["run"] == 1
    rest = run(st, "page")
    assert st.kernel.seqnr == 2 and st.kernel.knobs["run"] == 0 and st.at_end
    assert sum(o.what["pass_end"] for o in rest) == 2


def test_clones_are_independent_and_share_the_steps() -> None:
    st = stepper(STORY, pages_to_scan=2)
    st.feed(Next())
    st.feed(Next())
    twin = st.clone()
    assert twin.steps is st.steps and twin.pos == st.pos == 2
    run(st)
    assert twin.pos == 2 and "A" in twin.kernel.procs and twin.kernel.seqnr == 0
    assert [o.text for o in run(twin)] == [
        "write A heap[0-3] 'x'",
        *[o.text for o in run(stepper(STORY, pages_to_scan=2))][3:],
    ]


def test_validate_op_names_the_bad_field_without_a_step_index() -> None:
    st = stepper([{"op": "spawn", "proc": "A"}])
    run(st)
    with pytest.raises(ScenarioError) as err:
        validate_op(st.kernel, {"op": "write", "proc": "A", "vma": "nope", "content": "x"})
    assert err.value.field == "vma" and err.value.step is None


@pytest.mark.parametrize("name", preset_names())
@pytest.mark.parametrize("grain", GRAINS)
def test_stepping_by_any_grain_reaches_the_checkpoints_of_the_trace(name: str, grain: str) -> None:
    """A scan run batch by batch (or page by page) ends in the state of whole passes."""
    sc = load_preset(name)
    if grain == "page" and sum(s.count or 0 for s in sc.steps) > 2000:
        pytest.skip("too many pages to step one by one")
    st = Stepper(Kernel(sc.kernel, sc.sysfs), sc.steps)
    checkpoints = []
    while st.in_scenario:
        out = st.feed(Next(grain))  # type: ignore[arg-type]
        assert out is not None
        if out.checkpoint is not None:
            checkpoints.append(st.kernel.checkpoint(out.checkpoint))
    assert checkpoints == run_scenario(sc)["checkpoints"]


#: B73's story (a chain pruned by the timer once 2000 ms of the format's clock have passed)
PRUNE_STORY = {
    "kernel": "6.18",
    "sysfs": {"max_page_sharing": 4, "smart_scan": 0},
    "steps": [
        {"op": "spawn", "proc": "P"},
        {"op": "mmap", "proc": "P", "vma": "m", "pages": 7},
        {"op": "write", "proc": "P", "vma": "m", "pages": "1-6", "content": "A"},
        {"op": "madvise", "proc": "P", "vma": "m", "advice": "MADV_MERGEABLE"},
        {"op": "scan", "passes": 2},
        {"op": "write", "proc": "P", "vma": "m", "pages": 1, "content": "unique"},
        {"op": "scan", "passes": 8},
        {"op": "write", "proc": "P", "vma": "m", "pages": 0, "content": "A"},
        {"op": "scan", "passes": 2},
        {"op": "checkpoint", "name": "pruned"},
    ],
}


@pytest.mark.parametrize("grain", GRAINS)
def test_the_stepper_keeps_the_format_clock_at_any_grain(grain: str) -> None:
    """Passes of a ``scan`` step are 200 ms apart however the stepper is fed (B73): the
    prune timer fires in the same pass as in ``run_scenario`` and ``Kernel.scan``."""
    sc = parse_scenario(PRUNE_STORY)
    st = Stepper(Kernel(sc.kernel, sc.sysfs), sc.steps)
    checkpoints = []
    while st.in_scenario:
        out = st.feed(Next(grain))  # type: ignore[arg-type]
        assert out is not None
        if out.checkpoint is not None:
            checkpoints.append(st.kernel.checkpoint(out.checkpoint))
    assert st.kernel.clock_ms == 12 * 200
    assert checkpoints == run_scenario(sc)["checkpoints"]
    tokens = checkpoints[0]["pages"]["P"]["m"].split()
    assert tokens[0] == tokens[2] == tokens[3] == tokens[4] != tokens[5]  # joined the 3-item dup
