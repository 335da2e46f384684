"""``ksmlab sweep``: the grid, the definitions of settling and CPU, deterministic CSV output,
and an HTML report that needs no network."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from app.cli import main as ksmlab
from app.whatif.sweep import (
    CSV_COLUMNS,
    SweepPoint,
    expand_grid,
    parse_grid,
    results_csv,
    run_point,
    run_sweep,
)
from sim.timemodel import CpuCosts

PRESETS = ["chains-and-dups", "volatile-buffers", "zero-pages-unmerge"]
GRID = ["pages_to_scan=50,500", "use_zero_pages=0,1"]


def sweep_csv(tmp_path: Path, name: str, jobs: int) -> str:
    out = tmp_path / name
    status = ksmlab(
        [
            "sweep",
            "--presets",
            ",".join(PRESETS),
            "--grid",
            GRID[0],
            "--grid",
            GRID[1],
            "--out",
            str(out),
            "--jobs",
            str(jobs),
        ]
    )
    assert status == 0
    return (out / "sweep.csv").read_text()


def test_small_sweep_csv_rows_and_determinism(tmp_path: Path) -> None:
    first = sweep_csv(tmp_path, "a", jobs=2)
    second = sweep_csv(tmp_path, "b", jobs=1)
    assert first == second
    rows = list(csv.DictReader(io.StringIO(first)))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert len(rows) == len(PRESETS) * 2 * 2
    expected = [(p, str(n), str(z)) for p in PRESETS for n in (50, 500) for z in (0, 1)]
    assert [(r["preset"], r["pages_to_scan"], r["use_zero_pages"]) for r in rows] == expected
    for r in rows:
        assert r["error"] == "" and r["settled"] == "1" and r["kernel"] == "6.18"
        assert r["sleep_millisecs"] == "20" and r["smart_scan"] == "1"
    chains = [r for r in rows if r["preset"] == "chains-and-dups"]
    assert {r["max_page_sharing"] for r in chains} == {"16"}  # the preset's own value


def test_html_report_works_offline(tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert (
        ksmlab(
            [
                "sweep",
                "--presets",
                "smart-scan",
                "--grid",
                "smart_scan=0,1",
                "--out",
                str(out),
                "--jobs",
                "1",
            ]
        )
        == 0
    )
    page = (out / "sweep.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?https?:", page, re.I)
    assert "Plotly.newPlot" in page and 'id="profit-vs-cpu"' in page
    assert 'id="time-to-settle"' in page
    assert len(page) > 1_000_000  # plotly.js is inlined


def test_settle_time_and_cpu_definitions() -> None:
    # zero-pages-unmerge stops at its sweep_until checkpoint (pass3); 300 pages < 1000, so
    # each pass is one batch: pass 1 (300 first-pass pages), pass 2 (300 later), pass 3 (200
    # later: the zero-page items are freed) changes rmap_items, pass 4 changes nothing.
    r = run_point(SweepPoint("zero-pages-unmerge", "6.18", (("pages_to_scan", 1000),)))
    assert r.settled and r.passes == 4 and r.batches == 4
    assert (r.first_pass_pages, r.later_pass_pages) == (300, 300 + 200 + 200)
    cpu_first3 = 300 * 900 + 500 * 3500
    assert r.settle_ns == 3 * 20_000_000 + cpu_first3
    assert r.cpu_ns == cpu_first3 + 200 * 3500
    assert r.general_profit == 802304 and r.ksm_zero_pages == 100


def test_smart_scan_costs_skipped_pages() -> None:
    on, off = (run_point(SweepPoint("smart-scan", "6.18", (("smart_scan", v),))) for v in (1, 0))
    assert on.pages_skipped > 0 and off.pages_skipped == 0
    assert on.cpu_ns < off.cpu_ns
    assert on.general_profit == off.general_profit
    costs = CpuCosts()
    assert on.cpu_ns == (
        on.first_pass_pages * costs.first_ns
        + on.later_pass_pages * costs.later_ns
        + on.pages_skipped * costs.skip_ns
    )


def test_small_batches_take_longer_to_settle() -> None:
    pts = expand_grid(["vm-host"], [("pages_to_scan", [50, 5000])])
    slow, fast = run_sweep(pts, jobs=1)
    assert slow.settle_ns is not None and fast.settle_ns is not None
    assert slow.settle_ns > fast.settle_ns
    assert slow.general_profit == fast.general_profit


def test_prctl_preset_on_61_is_an_error_row() -> None:
    r = run_point(SweepPoint("prctl-merge-any", "6.1", ()))
    assert r.error.startswith("unsupported")
    assert "unsupported" in results_csv([r])


def test_parse_grid_errors() -> None:
    assert parse_grid(["max_page_sharing=2,256"]) == [("max_page_sharing", [2, 256])]
    for bad in ("run=1", "pages_to_scan", "pages_to_scan=a", "smart_scan=-1"):
        with pytest.raises(ValueError):
            parse_grid([bad])
    with pytest.raises(ValueError):
        parse_grid(["smart_scan=0", "smart_scan=1"])


def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ksmlab(["sweep", "--presets", "nope", "--out", str(tmp_path)]) == 2
    assert ksmlab(["sweep", "--grid", "run=2", "--out", str(tmp_path)]) == 2
    assert "ksmlab sweep:" in capsys.readouterr().err


def test_invalid_knob_value_is_an_error_row() -> None:
    r = run_point(SweepPoint("chains-and-dups", "6.18", (("max_page_sharing", 1),)))
    assert "max_page_sharing" in r.error or "EINVAL" in r.error


def test_presets_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert ksmlab(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 9
    assert lines[0].startswith("zero-pages-unmerge ")
    assert "[6.18, 6.12, 6.5]" in next(x for x in lines if x.startswith("prctl-merge-any"))


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_and_in_a_log() -> None:
    """A bar redrawn in place on a terminal; plain lines at most every ``interval`` seconds
    otherwise; the rate and ETA count only the runs computed now, not those resumed."""
    from app.whatif.cli import Progress

    now = [100.0]
    tty, pipe = _Tty(), io.StringIO()
    bars = [Progress(tty, clock=lambda: now[0]), Progress(pipe, interval=10, clock=lambda: now[0])]
    for done in range(2, 11):  # 2 of 10 runs resumed, then one run every 2 s
        for bar in bars:
            bar(done, 10)
        now[0] += 2.0
    assert tty.getvalue().count("\r") == 9 and tty.getvalue().endswith("\n")
    assert "[" + "#" * 30 + "] sweep 10/10 runs (2 resumed), 0.5 runs/s, 16s" in tty.getvalue()
    lines = pipe.getvalue().splitlines()
    assert lines[0] == "sweep 2/10 runs (2 resumed)"
    assert lines[1] == "sweep 7/10 runs (2 resumed), 0.5 runs/s, ETA 6s"  # 10 s later
    assert lines[-1] == "sweep 10/10 runs (2 resumed), 0.5 runs/s, 16s"
    assert len(lines) == 3 and "\r" not in pipe.getvalue()


def test_progress_goes_to_stderr_not_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sweep", "--presets", "smart-scan", "--grid", "smart_scan=0,1", "--no-html"]
    assert ksmlab([*args, "--out", str(tmp_path), "--jobs", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and "2 runs (2 computed on 1 process, 0 resumed" in out
    assert err.splitlines()[-1].startswith("sweep 2/2 runs, ")


def test_the_sweeps_knobs_and_counters_are_files_of_the_ksm_table() -> None:
    from app.whatif.sweep import SETTLE_COUNTERS, SWEEP_KNOBS
    from sim.ksm_files import GLOBAL_COUNTERS, KNOBS, KSM_STAT

    assert set(SWEEP_KNOBS) <= set(KNOBS)
    assert set(SETTLE_COUNTERS) <= set(GLOBAL_COUNTERS) | set(KSM_STAT)
