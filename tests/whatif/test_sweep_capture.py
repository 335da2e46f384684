"""``ksmlab sweep --capture``: a knob grid over a capture, on the pool and on Dask, resumed."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main as ksmlab
from app.whatif.predict import predict
from app.whatif.sweep import CaptureSource, SweepPoint, run_point

from .test_predict import quarter_capture

GRID = ["--grid", "pages_to_scan=200,2000", "--grid", "use_zero_pages=0,1"]


def test_a_run_is_the_prediction() -> None:
    cap = quarter_capture(1000, changing=10)
    src = CaptureSource.of("q", cap, 10.0, "all")
    point = SweepPoint(src.name, "6.18", (("pages_to_scan", 200), ("use_zero_pages", 1)))
    row = run_point(point, None, scenario=src)
    pred = predict(cap, "6.18", dict(point.knobs), duration_s=10.0, merge="all")
    assert row.error == ""
    assert (row.pages_sharing, row.ksm_zero_pages, row.cpu_ns, row.total_ns) == (
        pred.pages_sharing,
        pred.ksm_zero_pages,
        pred.cpu_ns,
        pred.now_ns,
    )
    assert row.knobs["pages_to_scan"] == 200


def _sweep(out: Path, cap: Path, *extra: str) -> int:
    status: int = ksmlab(
        ["sweep", "--capture", str(cap), *GRID, "--duration", "10", "--merge", "all"]
        + ["--no-html", "--out", str(out), *extra]
    )
    return status


def test_sweep_over_a_capture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cap = tmp_path / "guests.ksmcap"
    quarter_capture(2000, changing=20).save(cap)
    assert _sweep(tmp_path / "pool", cap, "--jobs", "2") == 0
    out = capsys.readouterr().out
    assert "4 runs (4 computed on 2 processes, 0 resumed" in out
    csv = (tmp_path / "pool" / "sweep.csv").read_text()
    rows = csv.splitlines()[1:]
    assert len(rows) == 4 and all(r.startswith("capture:guests.ksmcap,6.18,") for r in rows)
    # resumed: nothing computed again, the same bytes
    assert _sweep(tmp_path / "pool", cap, "--jobs", "2") == 0
    assert "(0 computed on 2 processes, 4 resumed" in capsys.readouterr().out
    assert (tmp_path / "pool" / "sweep.csv").read_text() == csv
    # another duration is another run
    assert _sweep(tmp_path / "pool", cap, "--jobs", "2", "--duration", "11") == 0
    assert "4 computed" in capsys.readouterr().out


def test_sweep_over_a_capture_on_dask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("distributed")
    cap = tmp_path / "guests.ksmcap"
    quarter_capture(2000, changing=20).save(cap)
    assert _sweep(tmp_path / "dask", cap, "--scheduler", "local:2") == 0
    assert "4 computed on" in capsys.readouterr().out
    assert _sweep(tmp_path / "pool", cap, "--jobs", "1") == 0
    dask_csv = (tmp_path / "dask" / "sweep.csv").read_bytes()
    assert dask_csv == (tmp_path / "pool" / "sweep.csv").read_bytes()


def test_bad_capture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.ksmcap"
    bad.write_bytes(b"KSMCAPTURE\n\xff\xff")
    assert _sweep(tmp_path / "o", bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--capture" in err and "truncated" in err
