"""The timeline on its own: sparse checkpoints within a memory budget, exact replay."""

from __future__ import annotations

from app.server.timeline import Timeline, estimate_bytes
from sim import Kernel
from sim.presets import load_preset
from sim.stepper import Stepper, WriteKnob


def make(preset: str, memory_bytes: int, interval: int = 4) -> Timeline:
    sc = load_preset(preset)
    return Timeline(
        sc,
        Stepper(Kernel(sc.kernel, sc.sysfs, record=True), sc.steps),
        interval=interval,
        memory_bytes=memory_bytes,
    )


def test_any_step_is_recomputed_exactly_from_sparse_checkpoints():
    t = make("vm-host", memory_bytes=1)  # the budget keeps only a few checkpoints
    states = [t.kernel.checkpoint("s")]
    while t.forward() is not None and t.step < 150:
        states.append(t.kernel.checkpoint("s"))
    assert len(t.branch.checkpoints) <= 3 < t.step // t.interval
    n = t.step
    assert n > 50
    for step in (0, 1, n // 3, n - 1, 5, n, 2):
        t.seek(step)
        assert t.kernel.checkpoint("s") == states[step], step


def test_checkpoints_fit_the_memory_budget():
    t = make("smart-scan", memory_bytes=0)
    budget_one = estimate_bytes(t.kernel)
    t = make("smart-scan", memory_bytes=10 * budget_one)
    for _ in range(300):
        if t.forward() is None:
            break
    assert 2 <= len(t.branch.checkpoints) <= 10 + 1
    assert 0 in t.branch.checkpoints


def test_an_action_in_the_past_starts_a_branch_and_the_old_one_is_kept():
    t = make("zero-pages-unmerge", memory_bytes=1 << 30)
    for _ in range(20):
        t.forward()
    head = t.kernel.checkpoint("s")
    t.seek(8)
    t.act(WriteKnob("pages_to_scan", 7))
    assert (t.branch.id, t.branch.base, t.step, len(t.branches)) == (1, 8, 9, 2)
    assert t.kernel.knobs["pages_to_scan"] == 7
    t.seek(20, 0)
    assert t.kernel.checkpoint("s") == head and t.kernel.knobs["pages_to_scan"] == 100


def test_the_batch_that_only_ends_a_pass_says_so():
    # zero-pages-unmerge: 300 pages, pages_to_scan 100: three batches of 100, then a batch
    # that finds no page left and completes the pass (as ksm_do_scan does)
    t = make("zero-pages-unmerge", memory_bytes=1 << 30)
    texts = []
    while t.kernel.seqnr < 1:
        res = t.forward()
        assert res is not None
        texts.append(res.action)
    assert texts[-4:] == [
        "scan 1: ksmd scanned 100 pages",
        "ksmd scanned 100 pages",
        "ksmd scanned 100 pages",
        "ksmd found no page left in this pass",
    ]
    assert [t.forward("page").action for _ in range(2)] == [  # type: ignore[union-attr]
        "checkpoint 'pass1'",
        "scan 1: ksmd scanned 1 page",
    ]
