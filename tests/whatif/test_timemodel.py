"""The time model by kind, calibration files, and the check's error figures (no root)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from app.cli import main as ksmlab
from app.whatif.check import RealRun, Sample, compare, curves_csv, time_to
from sim import Kernel
from sim.timemodel import (
    CALIBRATION_FORMAT,
    MACHINE_COSTS,
    BatchClock,
    CpuCosts,
    batch_cost,
    calibration_doc,
    load_calibration,
)

COSTS = CpuCosts(
    first_ns=1000,
    later_ns=5000,
    skip_ns=200,
    merge_ns=7000,
    zero_ns=2000,
    ksm_ns=300,
    pass_ns=100_000,
    wake_ns=4_000_000,
)


def _kernel(pages: int, content: str, **sysfs: int) -> Kernel:
    k = Kernel("6.18", {"pages_to_scan": 10_000, "smart_scan": 1, **sysfs}, record=True)
    k.spawn("P")
    k.mmap("P", "m", pages)
    if content in ("pairs", "quads"):
        group = pages // (2 if content == "pairs" else 4)
        for i in range(group):
            k.write("P", "m", [(j, j + 1) for j in range(i, pages, group)], f"c{i}")
    else:
        k.write("P", "m", None, content)
    k.madvise("P", "m", None, "MADV_MERGEABLE")
    k.start_scan()
    return k


def _passes(k: Kernel, clock: BatchClock, n: int) -> list[tuple[int, ...]]:
    out = []
    for _ in range(n):
        clock.before()
        c = clock.after(k.scan_batch())
        out.append((c.first, c.later, c.merged, c.zero, c.ksm, c.skipped, c.passes, c.cpu_ns))
    return out


def test_pages_by_kind_on_identical_pairs() -> None:
    """100 pages in 50 identical pairs, one batch per pass: pass 1 visits all first
    (checksum), pass 2 inserts 50 in the unstable tree (later) and merges 50, pass 3
    revisits 100 KSM pages."""
    k = _kernel(100, "pairs")
    clock = BatchClock(k, COSTS)
    got = _passes(k, clock, 3)
    assert [g[:7] for g in got] == [
        (100, 0, 0, 0, 0, 0, 1),
        (0, 50, 50, 0, 0, 0, 1),
        (0, 0, 0, 0, 100, 0, 1),
    ]
    assert [g[7] for g in got] == [
        100 * 1000 + 100_000,
        50 * 5000 + 50 * 7000 + 100_000,
        100 * 300 + 100_000,
    ]
    # time: CPU + sleep (20 ms default) + wake, per batch
    assert clock.time.now_ns == sum(g[7] for g in got) + 3 * (20_000_000 + 4_000_000)


def test_a_merge_into_a_ksm_page_costs_stable_ns() -> None:
    """100 pages in 25 identical fours, one batch per pass: pass 2 inserts 25 (later), merges
    25 with them into new KSM pages (merge) and 50 into those KSM pages (stable)."""
    costs = dataclasses.replace(COSTS, stable_ns=4000)
    k = _kernel(100, "quads")
    got = _passes(k, BatchClock(k, costs), 3)
    assert [g[:5] for g in got] == [
        (100, 0, 0, 0, 0),
        (0, 25, 75, 0, 0),
        (0, 0, 0, 0, 100),
    ]
    assert got[1][7] == 25 * 5000 + 25 * 7000 + 50 * 4000 + 100_000
    # without a stable figure, such a merge costs as a merge
    k = _kernel(100, "quads")
    assert _passes(k, BatchClock(k, COSTS), 2)[1][7] == 25 * 5000 + 75 * 7000 + 100_000


def test_batch_overhead_is_charged_once_per_batch() -> None:
    """batch_ns: the same 100 pairs in batches of 10 pages cost 10 overheads a pass, in
    CPU and so in time; one batch per pass costs one."""
    costs = dataclasses.replace(COSTS, batch_ns=40_000)
    one = _kernel(100, "pairs")
    whole = _passes(one, BatchClock(one, costs), 1)[0][7]
    assert whole == 100 * 1000 + 100_000 + 40_000
    small = _kernel(100, "pairs", pages_to_scan=10)
    clock = BatchClock(small, costs)
    got = _passes(small, clock, 11)  # 10 batches of 10 pages, then the pass end
    assert sum(g[0] for g in got) == 100 and got[-1][6] == 1
    assert [g[7] for g in got] == [10 * 1000 + 40_000] * 10 + [100_000 + 40_000]
    assert clock.time.cpu_ns == 100 * 1000 + 100_000 + 11 * 40_000


def test_pages_of_a_huge_page_cost_their_own() -> None:
    """Pages still mapped by a transparent huge page are charged thp_first_ns / thp_later_ns
    (a shorter page walk, a warm TLB); once KSM split the huge page, the ordinary costs."""
    costs = dataclasses.replace(COSTS, thp_first_ns=600, thp_later_ns=3000)
    k = _kernel(100, "unique", smart_scan=0)
    assert k.thp("P", "m", [(0, 100)]) == 100
    got = _passes(k, BatchClock(k, costs), 2)
    assert got[0][7] == 100 * 600 + 100_000
    assert got[1][7] == 100 * 3000 + 100_000
    # pairs in one huge page: pass 2 splits it (the first merge), the rest is ordinary
    k = _kernel(100, "pairs")
    k.thp("P", "m", [(0, 100)])
    clock = BatchClock(k, costs)
    got = _passes(k, clock, 5)
    assert got[0][7] == 100 * 600 + 100_000
    assert k.thp_pages() == 0 and got[4][7] == 100 * 300 + 100_000  # KSM pages now
    # without THP figures (a kernel without THP) they cost as the others
    k = _kernel(100, "unique", smart_scan=0)
    k.thp("P", "m", [(0, 100)])
    assert _passes(k, BatchClock(k, COSTS), 1)[0][7] == 100 * 1000 + 100_000


def test_zero_pages_and_skips() -> None:
    """50 zero-filled pages with use_zero_pages: pass 2 merges all with the zero page;
    50 unique pages: pass 5 (smart scan) skips all of them."""
    k = _kernel(50, "zero", use_zero_pages=1)
    got = _passes(k, BatchClock(k, COSTS), 2)
    assert got[1][:7] == (0, 0, 0, 50, 0, 0, 1)
    k = _kernel(50, "unique")
    got = _passes(k, BatchClock(k, COSTS), 5)
    assert got[4][:7] == (0, 0, 0, 0, 0, 50, 1)


def test_unsplit_costs_keep_the_two_kind_model() -> None:
    """Costs left at None charge merges, zero pages and revisits as later pages: the
    sweep's historical figures are unchanged."""
    k = _kernel(100, "pairs")
    clock = BatchClock(k, CpuCosts())
    got = _passes(k, clock, 3)
    old = [batch_cost(CpuCosts(), 100, 100, 0, 20), batch_cost(CpuCosts(), 100, 0, 0, 20)]
    assert [g[7] for g in got] == [old[0].cpu_ns, old[1].cpu_ns, old[1].cpu_ns]


def test_calibration_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(calibration_doc(MACHINE_COSTS, kernel="x")))
    assert load_calibration(path) == MACHINE_COSTS
    for doc, why in (
        ({"format": "other"}, "format"),
        ({"format": CALIBRATION_FORMAT}, "costs"),
        ({"format": CALIBRATION_FORMAT, "costs": {"first_ns": -1}}, "first_ns"),
        ({"format": CALIBRATION_FORMAT, "costs": {"fast_ns": 1}}, "fast_ns"),
    ):
        path.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=why):
            load_calibration(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        load_calibration(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_calibration(tmp_path / "missing.json")


def test_sweep_refuses_a_bad_calibration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    args = ["sweep", "--presets", "smart-scan", "--out", str(tmp_path / "o")]
    assert ksmlab([*args, "--calibration", str(bad)]) == 2
    assert "calibration" in capsys.readouterr().err
    assert ksmlab([*args, "--calibration", str(bad), "--costs", "1,2,3"]) == 2


def test_sweep_with_a_calibration(tmp_path: Path) -> None:
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps(calibration_doc(MACHINE_COSTS)))
    out = tmp_path / "o"
    args = ["sweep", "--presets", "smart-scan", "--grid", "pages_to_scan=100", "--jobs", "1"]
    assert ksmlab([*args, "--out", str(out), "--no-html", "--calibration", str(cal)]) == 0
    assert (out / "sweep.csv").read_text().count("\n") == 2


def _s(t: float, saved: int, cpu_ms: int = 0) -> Sample:
    return Sample(t, 10, saved, 0, 0, 0, cpu_ms * 1_000_000, proc_merging=saved + 10)


def test_check_errors_against_the_targets() -> None:
    """Kernel: 0 until 2 s, 90 at 3 s, 100 from 4 s on, 1 s of CPU in 10 s (10%).
    Prediction: 95 from 3 s on, 1.1 s of CPU: final -5%, t90 3 s against 3 s, CPU +10%;
    the tenths (1 s ... 10 s) differ by +5 (3 s) and -5 (4 s on): 5% of the final."""
    real = RealRun(
        [
            _s(t, v, c)
            for t, v, c in (
                (0, 0, 0),
                (1, 0, 0),
                (2, 0, 0),
                (3, 90, 0),
                (4, 100, 0),
                (10, 100, 1000),
            )
        ],
        wall_s=10.0,
    )
    pred = [_s(t, v, c) for t, v, c in ((0, 0, 0), (3, 95, 0), (10, 95, 1100))]
    r = compare(pred, real, 10.0)
    assert r["compared"] == "global sysfs"
    assert r["final"] == {"predicted": 95, "kernel": 100}
    assert r["errors"]["final"] == pytest.approx(-0.05)
    assert r["t90_s"] == {"predicted": 3, "kernel": 3}
    assert r["errors"]["t90"] == 0
    assert r["errors"]["cpu"] == pytest.approx(0.1)
    assert r["errors"]["curve"] == pytest.approx(0.05)  # tenths at 1..10 s: worst -5%
    assert r["within"] == {"final": True, "curve": True, "t90": True, "cpu": True}
    # zero pages that appeared without being counted (THP splits) count as memory saved
    real.zero_ptes_end = 5
    assert r["final_memory"]["kernel"] == 100  # computed before: unchanged
    assert compare(pred, real, 10.0)["final_memory"] == {
        "predicted": 95,
        "kernel": 105,
        "error": pytest.approx(-10 / 105),
    }
    # other processes merge too: the workload's own figures are compared
    real.others = [1]
    r = compare(pred, real, 10.0)
    assert r["compared"] == "workload ksm_stat"
    assert r["final"] == {"predicted": 105, "kernel": 110}
    assert time_to(real.samples, 0.9, lambda s: s.savings) == 3
    assert curves_csv(pred, real.samples).splitlines()[0].startswith("side,t_s,")


def test_check_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert ksmlab(["whatif-check", "--duration", "0"]) == 2
    assert "ksmlab whatif-check: " in capsys.readouterr().err
    assert ksmlab(["calibrate", "--pages", "5"]) == 2
    assert "--pages" in capsys.readouterr().err
