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


def test_a_seek_knows_the_viewed_steps_result_even_on_a_checkpoint():
    t = make("vm-host", memory_bytes=1 << 30, interval=4)
    texts = {}
    while (res := t.forward()) is not None and t.step < 40:
        texts[t.step] = res.action
    for step in (8, 4, 8, 13, 1, 27):  # 4, 8 hold checkpoints; a seek to 8 twice in a row
        res = t.seek(step)
        assert res is not None and res.step == step and res.action == texts[step], step
    assert t.seek(0) is None


def test_the_zero_pages_ksm_placed_are_known_on_old_kernels():
    sc = load_preset("zero-pages-unmerge").with_kernel("6.5")
    t = Timeline(sc, Stepper(Kernel(sc.kernel, sc.sysfs, record=True), sc.steps))
    while t.forward() is not None and t.step < 40:
        pass
    heap = t.kernel.vma("A", "heap")
    assert heap.pfn[5] == 0 and t.ksm_placed(heap.uid, 5) is True
    t.seek(3)  # before ksmd ran: not yet
    assert t.ksm_placed(heap.uid, 5) is False


def test_lockstep_meets_every_scenario_step_together():
    from app.config import Settings
    from app.server.sessions import SessionManager

    g = SessionManager(Settings()).create_compare(load_preset("vm-host"), ["6.1", "6.18"])
    a, b = (s.timeline for s in g.sessions)
    ticks = 0
    while g.step(1, "batch"):
        ticks += 1
        assert a.stepper.pos == b.stepper.pos  # the same scenario step on both, always
        assert (a.last and a.last.checkpoint) == (b.last and b.last.checkpoint)
    assert a.step != b.step  # each kernel ran its own number of batches
    assert ticks >= max(a.step, b.step)
    seen = []
    for _ in range(ticks):
        g.back(1)
        assert a.stepper.pos == b.stepper.pos
        if a.last and a.last.checkpoint:
            assert b.last is not None and b.last.checkpoint == a.last.checkpoint
            seen.append(a.last.checkpoint)
    assert (a.step, b.step) == (0, 0) and len(seen) >= 6
