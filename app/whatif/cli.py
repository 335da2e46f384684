"""``ksmlab presets`` and ``ksmlab sweep``.

``presets [--json]`` lists the shipped scenario stories (name, title, kernels).

``sweep [--presets a,b] [--grid KNOB=V1,V2 ...] [--kernel V] [--out DIR] [--jobs N]
[--max-passes N] [--costs FIRST,LATER,SKIP] [--png FILE]`` runs every preset under every
combination of the grid's knob values in the simulator, on all cores, and writes
``DIR/sweep.csv`` (rows in grid order, identical from run to run), ``DIR/sweep.html``
(self-contained plotly report) and, with ``--png``, one plot as a PNG (headless chromium).
Definitions of "settled" and of the CPU model: :mod:`app.whatif.sweep`,
``docs/cpu-model.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from sim import ScenarioError
from sim.presets import list_presets, preset_names
from sim.scenario import KERNELS

from .sweep import (
    DEFAULT_MAX_PASSES,
    CpuCosts,
    expand_grid,
    parse_grid,
    results_csv,
    run_sweep,
)

#: the grid used when no --grid is given
DEFAULT_GRID = ("pages_to_scan=100,300,1000,3000", "smart_scan=0,1")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def cmd_presets(args: argparse.Namespace) -> int:
    try:
        presets = list_presets()
    except ScenarioError as exc:
        _err(f"ksmlab presets: {exc}")
        return 2
    if args.json:
        _out(json.dumps([p.to_dict() for p in presets], indent=1))
        return 0
    width = max((len(p.name) for p in presets), default=0)
    for p in presets:
        kernels = "" if len(p.kernels) == len(KERNELS) else f"  [{', '.join(p.kernels)}]"
        _out(f"{p.name:<{width}}  {p.title}{kernels}")
    return 0


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.enabled = stream.isatty()
        self.start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total == 0:
            return
        fill = self.width * done // total
        bar = "#" * fill + "." * (self.width - fill)
        secs = time.monotonic() - self.start
        self.stream.write(f"\rsweep [{bar}] {done}/{total} runs {secs:5.1f}s")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


def _parse_costs(text: str) -> CpuCosts:
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError("--costs takes FIRST,LATER,SKIP in microseconds, e.g. 0.9,3.5,0.1")
    try:
        first, later, skip = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"bad --costs {text!r}: three numbers expected") from None
    if min(first, later, skip) < 0:
        raise ValueError("--costs must not be negative")
    return CpuCosts.from_us(first, later, skip)


def cmd_sweep(args: argparse.Namespace) -> int:
    try:
        names = preset_names()
        if args.presets:
            chosen = [n.strip() for n in args.presets.split(",") if n.strip()]
        else:  # every preset this kernel can run
            chosen = [p.name for p in list_presets() if args.kernel in p.kernels]
        unknown = [n for n in chosen if n not in names]
        if unknown:
            raise ValueError(f"no preset named {', '.join(unknown)} (known: {', '.join(names)})")
        grid = parse_grid(args.grid or DEFAULT_GRID)
        costs = _parse_costs(args.costs) if args.costs else CpuCosts()
        if args.jobs is not None and args.jobs < 1:
            raise ValueError("--jobs must be at least 1")
    except (ValueError, ScenarioError) as exc:
        _err(f"ksmlab sweep: {exc}")
        return 2
    points = expand_grid(chosen, grid, args.kernel)
    jobs = args.jobs or os.cpu_count() or 1
    started = time.monotonic()
    results = run_sweep(points, costs, jobs, args.max_passes, progress=Progress())
    elapsed = time.monotonic() - started
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        csv_path = out / "sweep.csv"
        csv_path.write_text(results_csv(results), encoding="utf-8")
        html_path = out / "sweep.html"
        if not args.no_html:
            from .report import render_report  # plotly only when a report is wanted

            command = "ksmlab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
            html_path.write_text(
                render_report(results, [k for k, _ in grid], costs, command),
                encoding="utf-8",
            )
        if args.png:
            from .report import figure_page, screenshot

            png = Path(args.png)
            png.unlink(missing_ok=True)
            why = screenshot(figure_page(results, [k for k, _ in grid], args.png_figure), png)
            if why:
                _err(f"ksmlab sweep: no PNG: {why}")
            else:
                _out(f"plot: {png}")
    except OSError as exc:
        _err(f"ksmlab sweep: cannot write {args.out}: {exc.strerror}")
        return 2
    failed = [r for r in results if r.error]
    _out(
        f"{len(results)} runs on {jobs} processes in {elapsed:.1f}s: {csv_path}"
        + ("" if args.no_html else f", {html_path}")
    )
    for r in failed:
        _err(f"  {r.preset} {r.knobs}: {r.error}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("presets", help="list the scenario presets (sim/presets)")
    p.add_argument("--json", action="store_true", help="print JSON (name, title, ...)")
    p.set_defaults(func=cmd_presets)

    s = sub.add_parser(
        "sweep",
        help="what-if grid: knobs x presets in the simulator, CSV + HTML report",
        description="Run presets under every combination of knob values (simulator only).",
    )
    s.add_argument("--presets", help="comma-separated preset names (default: all)")
    s.add_argument(
        "--grid",
        action="append",
        metavar="KNOB=V1,V2",
        help="knob values to try (repeatable); knobs: pages_to_scan, sleep_millisecs, "
        "use_zero_pages, smart_scan, max_page_sharing; default: " + " ".join(DEFAULT_GRID),
    )
    s.add_argument("--kernel", choices=KERNELS, default="6.18", help="kernel profile")
    s.add_argument("--out", default="out/sweep", help="output directory (default out/sweep)")
    s.add_argument("--jobs", type=int, help="worker processes (default: all cores)")
    s.add_argument(
        "--max-passes",
        type=int,
        default=DEFAULT_MAX_PASSES,
        help="passes after the story before a run counts as unsettled",
    )
    s.add_argument(
        "--costs",
        metavar="FIRST,LATER,SKIP",
        help="per-page ksmd CPU in us (default 0.9,3.5,0.1; see docs/cpu-model.md)",
    )
    s.add_argument("--no-html", action="store_true", help="write only the CSV")
    s.add_argument(
        "--png", metavar="FILE", help="also save one plot as a PNG (headless chromium screenshot)"
    )
    s.add_argument(
        "--png-figure",
        default="time-to-settle",
        choices=("profit-vs-cpu", "time-to-settle", "settle-vs-cpu-share"),
        help="which plot --png saves (default time-to-settle)",
    )
    s.set_defaults(func=cmd_sweep)
