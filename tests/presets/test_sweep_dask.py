"""``ksmlab sweep --scheduler``: a real ``distributed.LocalCluster`` of two worker processes
over TCP on loopback runs the sweep, and the CSV is the local pool's, byte for byte."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

from app.cli import main as ksmlab  # noqa: E402
from app.whatif.cluster import parse_scheduler  # noqa: E402
from app.whatif.store import STORE_NAME  # noqa: E402

#: a second cluster's scheduler HTTP server (health routes, 127.0.0.1) takes another port
pytestmark = pytest.mark.filterwarnings("ignore:Port .* is already in use")
ROOT = Path(__file__).resolve().parents[2]
PRESETS = "chains-and-dups,volatile-buffers,zero-pages-unmerge,vm-host,smart-scan"
GRID = ["--grid", "pages_to_scan=50,500,5000", "--grid", "use_zero_pages=0,1"]
TOTAL = 5 * 3 * 2


def _cluster(n_workers: int) -> Any:
    return distributed.LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        protocol="tcp",
        dashboard_address=None,
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with _cluster(2) as c:
        yield c


def _sweep(out: Path, *extra: str) -> int:
    status: int = ksmlab(
        ["sweep", "--presets", PRESETS, *GRID, "--no-html", "--out", str(out), *extra]
    )
    return status


def test_a_dask_cluster_gives_the_local_pools_csv_bit_for_bit(
    cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = cluster.scheduler_address
    assert address.startswith("tcp://127.0.0.1:")
    with distributed.Client(cluster) as client:
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
        assert _sweep(tmp_path / "dask", "--scheduler", address) == 0
        out = capsys.readouterr().out
        assert f"{TOTAL} runs ({TOTAL} computed on the Dask cluster at {address} (2 workers)" in out

        def sweep_tasks(dask_worker: Any) -> int:
            return len({str(e[0]) for e in dask_worker.state.log if "ksmlab-sweep" in str(e[0])})

        per_worker = client.run(sweep_tasks)
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values())
    assert sum(per_worker.values()) == TOTAL  # every run ran on the cluster, once

    assert _sweep(tmp_path / "pool", "--jobs", "2") == 0
    dask_csv = (tmp_path / "dask" / "sweep.csv").read_bytes()
    assert dask_csv == (tmp_path / "pool" / "sweep.csv").read_bytes()
    assert dask_csv.count(b"\n") == TOTAL + 1

    # the runs are kept as on the pool: the same command again computes nothing
    assert _sweep(tmp_path / "dask", "--scheduler", address) == 0
    assert f"(0 computed on the Dask cluster at {address} (2 workers), {TOTAL} resumed" in (
        capsys.readouterr().out
    )
    assert (tmp_path / "dask" / "sweep.csv").read_bytes() == dask_csv


def test_local_n_starts_a_cluster_for_the_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sweep", "--presets", "smart-scan", "--grid", "smart_scan=0,1", "--no-html"]
    assert ksmlab([*args, "--out", str(tmp_path / "a"), "--scheduler", "local:2"]) == 0
    assert "on a local Dask cluster of 2 workers" in capsys.readouterr().out
    assert ksmlab([*args, "--out", str(tmp_path / "b"), "--jobs", "1"]) == 0
    assert (tmp_path / "a" / "sweep.csv").read_bytes() == (
        tmp_path / "b" / "sweep.csv"
    ).read_bytes()


def test_bad_scheduler_is_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for spec in ("nope", "tcp://127.0.0.1", "http://127.0.0.1:8786", "tcp://h:99999", "local:0"):
        assert _sweep(tmp_path / "x", "--scheduler", spec) == 2
        err = capsys.readouterr().err
        assert err.startswith("ksmlab sweep: ") and err.count("\n") == 1 and "--scheduler" in err
    assert not (tmp_path / "x").exists()  # refused before anything is written
    assert _sweep(tmp_path / "x", "--scheduler", "local:2", "--jobs", "2") == 2
    assert "--jobs" in capsys.readouterr().err

    # a well-formed address where no scheduler listens (a loopback port just closed)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    assert _sweep(tmp_path / "y", "--scheduler", f"tcp://127.0.0.1:{port}") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ksmlab sweep: cannot reach the Dask scheduler tcp://127.0.0.1:{port}")
    assert err.count("\n") == 1 and time.monotonic() - started < 60
    assert parse_scheduler(" local:3 ") == ("local", 3)
    assert parse_scheduler("tcp://[::1]:8786") == ("address", "tcp://[::1]:8786")


def test_a_worker_running_other_code_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker whose simulator differs (here: a copy of the code with one line added to
    ``sim/kernel.py``) would give other numbers: the sweep refuses the cluster."""
    other = tmp_path / "other"
    for pkg in ("sim", "app"):
        shutil.copytree(ROOT / pkg, other / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with (other / "sim" / "kernel.py").open("a") as f:
        f.write("\n# another version\n")
    with _cluster(0) as cluster, distributed.Client(cluster) as client:
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address]
            + ["--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1"],
            cwd=other,
            env={"PYTHONPATH": str(other), "PATH": "/usr/bin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client.wait_for_workers(1, timeout=60)
            assert _sweep(tmp_path / "out", "--scheduler", cluster.scheduler_address) == 2
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    err = capsys.readouterr().err
    assert "run other ksmlab code than this process" in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "sweep.csv").exists()
    assert (tmp_path / "out" / STORE_NAME).exists()  # (empty: nothing ran)


def test_losing_the_scheduler_midway_is_exit_1_and_the_runs_done_are_kept(
    tmp_path: Path,
) -> None:
    """A real scheduler and two workers (``dask scheduler``, ``dask worker`` processes on
    127.0.0.1); the scheduler is killed with SIGKILL while the sweep runs: ``ksmlab sweep``
    stops with one line and exit status 1, and the same sweep on another cluster computes
    only the runs that were missing, ending with the local pool's CSV."""
    import signal
    import socket

    from tests.presets.test_sweep_resume import SLOW_GRID, TOTAL, _stored

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": ROOT}
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"]
        + ["--port", str(port), "--no-dashboard"],
        **quiet,  # type: ignore[call-overload]
    )
    workers = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1"]
        + ["--nworkers", "2", "--no-dashboard", "--host", "127.0.0.1"],
        **quiet,  # type: ignore[call-overload]
    )
    out = tmp_path / "lost"
    db = out / STORE_NAME
    try:
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        sweep = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "sweep", *SLOW_GRID, "--no-html"]
            + ["--out", str(out), "--scheduler", address],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while _stored(db) < TOTAL // 4 and sweep.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sweep.poll() is None, "the sweep ended before the scheduler could be killed"
        scheduler.send_signal(signal.SIGKILL)
        _, err = sweep.communicate(timeout=120)
    finally:
        for proc in (scheduler, workers):
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=60)
    assert sweep.returncode == 1
    line = next(x for x in err.splitlines() if x.startswith("ksmlab sweep: "))
    assert line.startswith("ksmlab sweep: the Dask cluster failed: ")
    assert line.endswith("run the same command again to resume")
    kept = _stored(db)
    assert TOTAL // 4 <= kept < TOTAL

    again = ksmlab(["sweep", *SLOW_GRID, "--no-html", "--out", str(out), "--scheduler", "local:2"])
    assert again == 0 and _stored(db) == TOTAL
    assert (
        ksmlab(["sweep", *SLOW_GRID, "--no-html", "--out", str(tmp_path / "p"), "--jobs", "2"]) == 0
    )
    assert (out / "sweep.csv").read_bytes() == (tmp_path / "p" / "sweep.csv").read_bytes()


def test_an_address_where_another_server_listens_is_refused_in_bounded_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``distributed.Client`` alone would wait for ever on a server that is not a Dask
    scheduler (its timeout bounds the TCP connection, not the handshake): a real HTTP
    server on 127.0.0.1 that never answers Dask's handshake is refused, exit 2."""
    import threading
    from http.server import HTTPServer, SimpleHTTPRequestHandler

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # (its log would land in the stderr checked below)

    server = HTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    address = f"tcp://127.0.0.1:{server.server_address[1]}"
    try:
        started = time.monotonic()
        assert _sweep(tmp_path, "--scheduler", address) == 2
        assert time.monotonic() - started < 60
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert err.startswith(f"ksmlab sweep: cannot reach the Dask scheduler {address}: ")
    assert err.count("\n") == 1
    assert not (tmp_path / "sweep.csv").exists()
