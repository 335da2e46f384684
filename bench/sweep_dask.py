"""Sweep benchmark (issue 18): the same grid on the local process pool and on a Dask
``LocalCluster`` of 2 worker processes (TCP on 127.0.0.1), wall time of each, and whether
the two CSVs are identical byte for byte.

Prints, for the grid (every preset x the knob values below, ``--grid`` to change it):

- the local pool (``--jobs``, default 2) without and with the store (each run committed to
  ``sweep.sqlite`` as it finishes), and the Dask cluster (with the store): wall time of the
  runs and runs per second, the best of ``--repeat`` (3) interleaved rounds;
- the time to start the cluster and connect;
- a resumed sweep (every run already stored): wall time to rebuild the CSV;
- ``identical: yes`` if the pool's and the cluster's CSV bytes are equal.

Usage: ``python bench/sweep_dask.py [--jobs 2] [--workers 2] [--grid KNOB=V1,V2 ...]``.
Everything runs on this machine, in a temporary directory; the cluster is closed at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.whatif.cluster import dask_runner  # noqa: E402
from app.whatif.store import STORE_NAME, ResultStore  # noqa: E402
from app.whatif.sweep import (  # noqa: E402
    CpuCosts,
    expand_grid,
    parse_grid,
    pool_runner,
    results_csv,
    run_sweep,
)
from sim.presets import preset_names  # noqa: E402

DEFAULT_GRID = [
    "pages_to_scan=1,2,4,8,16,100,1000",
    "sleep_millisecs=20,200",
    "smart_scan=0,1",
    "use_zero_pages=0,1",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="local pool processes (default 2)")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster workers (default 2)")
    ap.add_argument("--grid", action="append", help="KNOB=V1,V2 (repeatable)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each (default 3; best shown)")
    args = ap.parse_args()
    grid = parse_grid(args.grid or DEFAULT_GRID)
    points = expand_grid(preset_names(), grid, "6.18")
    costs = CpuCosts()
    print(f"grid: {len(points)} runs ({len(preset_names())} presets x {grid})")
    print(f"machine: {os.cpu_count()} cores")

    t_plain, t_pool, t_dask = [], [], []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        out = Path(tmp)
        t0 = time.perf_counter()
        runner, where = stack.enter_context(dask_runner(f"local:{args.workers}"))
        t_start = time.perf_counter() - t0
        for rep in range(args.repeat):  # interleaved, so that a busy spell hits all three
            t0 = time.perf_counter()
            plain = run_sweep(points, costs, runner=pool_runner(args.jobs))
            t_plain.append(time.perf_counter() - t0)

            (out / f"pool{rep}").mkdir()
            with ResultStore(out / f"pool{rep}" / STORE_NAME) as store:
                t0 = time.perf_counter()
                pool = run_sweep(points, costs, store=store, runner=pool_runner(args.jobs))
                t_pool.append(time.perf_counter() - t0)

            (out / f"dask{rep}").mkdir()
            with ResultStore(out / f"dask{rep}" / STORE_NAME) as store:
                t0 = time.perf_counter()
                dask = run_sweep(points, costs, store=store, runner=runner)
                t_dask.append(time.perf_counter() - t0)

        with ResultStore(out / "pool0" / STORE_NAME) as store:
            t0 = time.perf_counter()
            resumed = run_sweep(points, costs, store=store, runner=pool_runner(args.jobs))
            t_resume = time.perf_counter() - t0

    n = len(points)
    csv_pool = results_csv(pool).encode()
    same = csv_pool == results_csv(dask).encode() == results_csv(plain).encode()
    same = same and csv_pool == results_csv(resumed).encode()

    def row(label: str, times: list[float]) -> None:
        best = min(times)
        spread = (
            "" if len(times) == 1 else f"  (of {len(times)}: {' '.join(f'{t:.2f}' for t in times)})"
        )
        print(f"{label:<48}: {best:7.2f} s  {n / best:7.1f} runs/s{spread}")

    print(f"wall time, best of {args.repeat}:")
    row(f"local pool, {args.jobs} processes, no store", t_plain)
    row(f"local pool, {args.jobs} processes, SQLite store", t_pool)
    row(f"dask LocalCluster, {args.workers} workers, SQLite store", t_dask)
    print(f"{'start ' + where:<48}: {t_start:7.2f} s")
    print(f"{'resumed (all ' + str(n) + ' runs stored)':<48}: {t_resume:7.2f} s")
    print(f"identical: {'yes' if same else 'NO'} ({len(csv_pool)} CSV bytes)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
