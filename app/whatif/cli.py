"""``ksmlab presets`` and ``ksmlab sweep``.

``presets [--json]`` lists the shipped scenario stories (name, title, kernels).

``sweep [--presets a,b] [--capture FILE [--duration S] [--merge MODE]] [--grid KNOB=V1,V2 ...]
[--kernel V] [--out DIR] [--jobs N] [--max-passes N] [--costs FIRST,LATER,SKIP | --calibration FILE]
[--png FILE] [--scheduler ADDRESS] [--fresh]``
runs every preset under every combination of the grid's knob values in the simulator, on
all cores (or on a Dask cluster: ``--scheduler tcp://HOST:PORT`` or ``local:N``), keeps each
finished run in ``DIR/sweep.sqlite`` (a killed sweep resumes when run again), shows progress
on stderr, and writes ``DIR/sweep.csv`` (rows in grid order, identical from run to run and
on any runner), ``DIR/sweep.html`` (self-contained plotly report) and, with ``--png``, one
plot as a PNG (headless chromium). Exit status 2 for bad input (a bad ``--scheduler``
included), 1 if the pool or the cluster fails during the sweep (the runs done are kept).
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
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

from sim import ScenarioError
from sim.capture import CaptureError, load_capture
from sim.fromcapture import MERGE_MODES
from sim.presets import list_presets, preset_names
from sim.scenario import KERNELS
from sim.timemodel import CpuCosts, load_calibration

from .cluster import parse_scheduler
from .store import STORE_NAME, ResultStore, StoreError
from .sweep import (
    DEFAULT_CAPTURE_DURATION_S,
    DEFAULT_MAX_PASSES,
    CaptureSource,
    CodeMismatchError,
    RunnerError,
    Source,
    expand_grid,
    parse_grid,
    pool_runner,
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
    """Progress on stderr (never stdout): runs done/total, rate, ETA.

    On a terminal, one line redrawn in place with a bar (at most 10 times a second);
    otherwise (a log, a CI job) one plain line at the start, then at most one every
    ``interval`` seconds, and one at the end. The rate counts only the runs computed now
    (not those resumed from the store).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        width: int = 30,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.interval = interval
        self.clock = clock
        self.tty = self.stream.isatty()
        self.base: int | None = None
        self.start = 0.0
        self.last = 0.0

    def line(self, done: int, total: int, now: float) -> str:
        base = self.base or 0
        text = f"sweep {done}/{total} runs"
        if base:
            text += f" ({base} resumed)"
        elapsed = now - self.start
        computed = done - base
        if computed > 0 and elapsed > 0:
            rate = computed / elapsed
            text += f", {rate:.1f} runs/s"
            if done < total:
                text += f", ETA {_duration((total - done) / rate)}"
            else:
                text += f", {_duration(elapsed)}"
        return text

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        first = self.base is None
        if first:
            self.base, self.start, self.last = done, now, now
        if total == 0:
            return
        if self.tty:
            if not (first or done == total or now - self.last >= 0.1):
                return  # at most 10 redraws a second
            self.last = now
            fill = self.width * done // total
            bar = "#" * fill + "." * (self.width - fill)
            self.stream.write(f"\r[{bar}] {self.line(done, total, now)}\x1b[K")
            if done == total:
                self.stream.write("\n")
        elif first or done == total or now - self.last >= self.interval:
            self.last = now
            self.stream.write(self.line(done, total, now) + "\n")
        self.stream.flush()


def _duration(secs: float) -> str:
    secs = max(0, round(secs))
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m{secs % 60:02d}s"
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m"


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
        elif args.capture:  # only the captures
            chosen = []
        else:  # every preset this kernel can run
            chosen = [p.name for p in list_presets() if args.kernel in p.kernels]
        unknown = [n for n in chosen if n not in names]
        if unknown:
            raise ValueError(f"no preset named {', '.join(unknown)} (known: {', '.join(names)})")
        sources: dict[str, Source] = {}
        if args.duration <= 0:
            raise ValueError("--duration must be > 0")
        for path in args.capture or []:
            try:
                cap = load_capture(path)
            except CaptureError as exc:
                raise ValueError(f"--capture {path}: {exc}") from None
            src = CaptureSource.of(Path(path).name, cap, args.duration, args.merge)
            if src.name in sources:
                raise ValueError(f"two captures named {Path(path).name!r}")
            sources[src.name] = src
            chosen.append(src.name)
        grid = parse_grid(args.grid or DEFAULT_GRID)
        if args.costs and args.calibration:
            raise ValueError("--costs and --calibration: give one of them")
        costs = _parse_costs(args.costs) if args.costs else CpuCosts()
        if args.calibration:
            costs = load_calibration(args.calibration)
        if args.jobs is not None and args.jobs < 1:
            raise ValueError("--jobs must be at least 1")
        if args.scheduler is not None:
            if args.jobs is not None:
                raise ValueError("--jobs is for the local pool: not with --scheduler")
            parse_scheduler(args.scheduler)
    except (ValueError, ScenarioError) as exc:
        _err(f"ksmlab sweep: {exc}")
        return 2
    points = expand_grid(chosen, grid, args.kernel)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        db_path = out / STORE_NAME
        if args.fresh:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        store = ResultStore(db_path)
    except OSError as exc:
        _err(f"ksmlab sweep: cannot write {args.out}: {exc.strerror}")
        return 2
    except StoreError as exc:
        _err(f"ksmlab sweep: {exc} (remove it or use --fresh)")
        return 2
    started = time.monotonic()
    with store, ExitStack() as stack:
        if args.scheduler:
            from .cluster import SchedulerError, dask_runner

            try:
                runner, where = stack.enter_context(dask_runner(args.scheduler))
            except SchedulerError as exc:
                _err(f"ksmlab sweep: {exc}")
                return 2
        else:
            jobs = args.jobs or os.cpu_count() or 1
            runner, where = pool_runner(jobs), f"{jobs} process" + ("es" if jobs > 1 else "")
        bar = Progress()
        try:
            results = run_sweep(
                points,
                costs,
                max_passes=args.max_passes,
                progress=bar,
                store=store,
                runner=runner,
                sources=sources,
            )
        except (CodeMismatchError, StoreError) as exc:
            _err(f"ksmlab sweep: {exc}; the runs done so far are kept in {db_path}")
            return 2
        except RunnerError as exc:
            _err(
                f"ksmlab sweep: {exc}; the runs done so far are kept in {db_path}: "
                "run the same command again to resume"
            )
            return 1
        except KeyboardInterrupt:
            _err(f"ksmlab sweep: interrupted; run the same command again to resume ({db_path})")
            return 130
    elapsed = time.monotonic() - started
    try:
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
    resumed = bar.base or 0
    _out(
        f"{len(results)} runs ({len(results) - resumed} computed on {where}, {resumed} "
        f"resumed from {STORE_NAME}) in {elapsed:.1f}s: {csv_path}"
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
    s.add_argument(
        "--capture",
        action="append",
        metavar="FILE",
        help="a ksm-capture/1 file (ksmlab capture) to sweep over, next to the presets "
        "(repeatable; with --capture and no --presets, only the captures); each run is a "
        "prediction over --duration simulated seconds (see docs/whatif.md)",
    )
    s.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_CAPTURE_DURATION_S,
        help=f"simulated seconds of a capture's runs (default {DEFAULT_CAPTURE_DURATION_S:g})",
    )
    s.add_argument(
        "--merge",
        choices=MERGE_MODES,
        default="captured",
        help="a capture's mergeable mappings: as captured (default), all, or prctl",
    )
    s.add_argument("--kernel", choices=KERNELS, default="6.18", help="kernel profile")
    s.add_argument("--out", default="out/sweep", help="output directory (default out/sweep)")
    s.add_argument("--jobs", type=int, help="processes of the local pool (default: all cores)")
    s.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on a Dask cluster: the scheduler's tcp://HOST:PORT, or local:N for a "
        "local Dask cluster of N worker processes (default: the local process pool); "
        "see docs/sweeps.md",
    )
    s.add_argument(
        "--fresh",
        action="store_true",
        help=f"forget the runs kept in OUT/{STORE_NAME} (default: resume, reusing them)",
    )
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
    s.add_argument(
        "--calibration",
        metavar="FILE",
        help="ksmd costs measured by `ksmlab calibrate` (a JSON file; instead of --costs)",
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
