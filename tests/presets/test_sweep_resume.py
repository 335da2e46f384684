"""A sweep keeps each run in ``OUT/sweep.sqlite`` as it finishes: a real ``ksmlab sweep``
killed with SIGKILL halfway, then run again, computes only the missing runs and ends with
the same CSV, byte for byte, as an uninterrupted sweep."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.cli import main as ksmlab
from app.whatif.store import STORE_NAME, ResultStore
from app.whatif.sweep import (
    SweepPoint,
    expand_grid,
    point_key,
    results_csv,
    run_point,
    run_sweep,
    serial_runner,
)
from sim.presets import load_preset
from sim.timemodel import CpuCosts

ROOT = Path(__file__).resolve().parents[2]
#: 9 presets x 8 x 2 x 2 = 288 runs, a few seconds on 2 processes
SLOW_GRID = [
    "--grid",
    "pages_to_scan=1,2,3,4,5,6,7,8",
    "--grid",
    "sleep_millisecs=20,200",
    "--grid",
    "smart_scan=0,1",
]
TOTAL = 9 * 8 * 2 * 2


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "app.cli", "sweep", *SLOW_GRID, "--no-html", "--jobs", "2"] + [
        "--out",
        str(out),
    ]


def _stored(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])
    except sqlite3.OperationalError:  # the table is not there yet
        return 0


def test_a_sweep_killed_halfway_resumes_where_it_stopped(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = tmp_path / "killed"
    db = killed / STORE_NAME
    proc = subprocess.Popen(
        _command(killed),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its pool's processes in a group of their own
    )
    try:
        deadline = time.monotonic() + 120
        while _stored(db) < TOTAL // 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 of ksmlab sweep itself
        proc.wait(timeout=30)
    finally:
        try:  # then its orphaned pool processes (the group started above)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    kept = _stored(db)
    assert TOTAL // 3 <= kept < TOTAL
    assert not (killed / "sweep.csv").exists()

    again = subprocess.run(
        _command(killed), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    m = re.match(r"(\d+) runs \((\d+) computed on 2 processes, (\d+) resumed", again.stdout)
    assert m, again.stdout
    assert (int(m[1]), int(m[2]), int(m[3])) == (TOTAL, TOTAL - kept, kept)
    assert f"({kept} resumed)" in again.stderr.splitlines()[0]  # the progress line
    assert _stored(db) == TOTAL

    whole = tmp_path / "whole"
    status = ksmlab(["sweep", *SLOW_GRID, "--no-html", "--jobs", "2", "--out", str(whole)])
    assert status == 0
    assert (killed / "sweep.csv").read_bytes() == (whole / "sweep.csv").read_bytes()


def test_the_store_keys_runs_by_what_they_depend_on(tmp_path: Path) -> None:
    point = SweepPoint("smart-scan", "6.18", (("smart_scan", 0),))
    scenario = load_preset("smart-scan")
    key = point_key(point, scenario, CpuCosts(), 64)
    assert key == point_key(point, load_preset("smart-scan"), CpuCosts(), 64)
    others = {
        point_key(SweepPoint("smart-scan", "6.12", point.knobs), scenario, CpuCosts(), 64),
        point_key(SweepPoint("smart-scan", "6.18", (("smart_scan", 1),)), scenario, CpuCosts(), 64),
        point_key(point, scenario, CpuCosts(first_ns=901), 64),
        point_key(point, scenario, CpuCosts(), 63),
        point_key(point, load_preset("vm-host"), CpuCosts(), 64),  # same name, other content
    }
    assert key not in others and len(others) == 5

    result = run_point(point)
    with ResultStore(tmp_path / STORE_NAME) as store:
        store.put(key, point, result)
        assert store.get_many([key, "absent"]) == {key: result}
    with ResultStore(tmp_path / STORE_NAME) as store:  # reopened: still there, same values
        assert store.get_many([key])[key] == result
        assert len(store) == 1


def test_a_resumed_sweep_runs_only_what_is_missing(tmp_path: Path) -> None:
    points = expand_grid(["smart-scan", "vm-host"], [("pages_to_scan", [50, 500, 5000])])
    with ResultStore(tmp_path / STORE_NAME) as store:
        first = run_sweep(points[:4], store=store, runner=serial_runner)
        ran: list[int] = []

        def counting(work):  # type: ignore[no-untyped-def]
            ran.extend(item[0] for item in work)
            return serial_runner(work)

        seen: list[tuple[int, int]] = []
        both = run_sweep(
            points, store=store, runner=counting, progress=lambda d, t: seen.append((d, t))
        )
    assert ran == [4, 5] and seen == [(4, 6), (5, 6), (6, 6)]
    assert both[:4] == first
    assert results_csv(both) == results_csv(run_sweep(points, runner=serial_runner))


def test_fresh_forgets_and_a_broken_store_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sweep", "--presets", "smart-scan", "--grid", "smart_scan=0,1", "--no-html"]
    out = ["--out", str(tmp_path), "--jobs", "1"]
    assert ksmlab([*args, *out]) == 0
    assert ksmlab([*args, *out]) == 0
    assert "0 computed on 1 process, 2 resumed" in capsys.readouterr().out
    assert ksmlab([*args, *out, "--fresh"]) == 0
    assert "2 computed on 1 process, 0 resumed" in capsys.readouterr().out
    (tmp_path / STORE_NAME).write_bytes(b"not a database, " * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / STORE_NAME}{suffix}").unlink(missing_ok=True)
    assert ksmlab([*args, *out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ksmlab sweep: ") and STORE_NAME in err and "\n" not in err
    assert ksmlab([*args, *out, "--fresh"]) == 0
