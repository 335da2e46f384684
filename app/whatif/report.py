"""The sweep's HTML report: one self-contained page (plotly.js embedded, works offline).

Two plots, built as plain plotly figure dicts: final ``general_profit`` against modelled
ksmd CPU (one point per run, one colour per preset), and time to settle against the first
grid knob (one line per preset and combination of the other grid knobs); then the table
of every run.
"""

from __future__ import annotations

import html
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.io as pio  # type: ignore[import-untyped]

from sim.timemodel import CpuCosts

from .sweep import CSV_COLUMNS, SWEEP_KNOBS, SweepResult, cpu_share, result_row

MIB = 1024 * 1024


def _label(r: SweepResult, knobs: Sequence[str]) -> str:
    return " ".join(f"{k}={r.knobs.get(k)}" for k in knobs)


def profit_cpu_figure(results: Sequence[SweepResult], grid_knobs: Sequence[str]) -> dict[str, Any]:
    data = []
    for preset in dict.fromkeys(r.preset for r in results):
        rows = [r for r in results if r.preset == preset and not r.error]
        if not rows:
            continue
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": preset,
                "x": [r.cpu_ns / 1e6 for r in rows],
                "y": [r.general_profit / MIB for r in rows],
                "text": [
                    f"{preset}<br>{_label(r, grid_knobs)}<br>settle "
                    + (f"{r.settle_ns / 1e9:.3f} s" if r.settle_ns is not None else "not settled")
                    for r in rows
                ],
                "hoverinfo": "text+x+y",
                "marker": {"size": 9},
            }
        )
    return {
        "data": data,
        "layout": {
            "title": {"text": "Memory saved (general_profit) vs modelled ksmd CPU"},
            "xaxis": {"title": {"text": "ksmd CPU until the end of the run (ms, modelled)"}},
            "yaxis": {"title": {"text": "general_profit at the end (MiB)"}},
            "height": 520,
            "template": "plotly_white",
        },
    }


def settle_figure(results: Sequence[SweepResult], grid_knobs: Sequence[str]) -> dict[str, Any]:
    xknob = grid_knobs[0] if grid_knobs else "pages_to_scan"
    others = [k for k in grid_knobs if k != xknob]
    groups: dict[str, list[SweepResult]] = {}
    for r in results:
        if r.error:
            continue
        key = r.preset + (" " + _label(r, others) if others else "")
        groups.setdefault(key, []).append(r)
    data = []
    xs_all: list[int] = []
    ys: list[float] = []
    for key, rows in groups.items():
        rows = sorted(rows, key=lambda r: r.knobs.get(xknob) or 0)
        xs = [r.knobs.get(xknob) or 0 for r in rows]
        xs_all += xs
        ys += [r.settle_ns / 1e9 for r in rows if r.settle_ns is not None]
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": key,
                "x": xs,
                "y": [None if r.settle_ns is None else r.settle_ns / 1e9 for r in rows],
            }
        )
    log_x = bool(xs_all) and min(xs_all) > 0 and max(xs_all) >= 10 * min(xs_all)
    log_y = bool(ys) and min(ys) > 0 and max(ys) >= 10 * min(ys)
    return {
        "data": data,
        "layout": {
            "title": {"text": f"Time until merging settles vs {xknob}"},
            "xaxis": {"title": {"text": xknob}, "type": "log" if log_x else "linear"},
            "yaxis": {
                "title": {"text": "simulated time to settle (s)"},
                "type": "log" if log_y else "linear",
            },
            "height": 520,
            "template": "plotly_white",
        },
    }


def tradeoff_figure(results: Sequence[SweepResult], grid_knobs: Sequence[str]) -> dict[str, Any]:
    """Time to settle against ksmd's CPU share: what pages_to_scan / sleep_millisecs buy."""
    data = []
    for preset in dict.fromkeys(r.preset for r in results):
        rows = [
            r for r in results if r.preset == preset and not r.error and r.settle_ns is not None
        ]
        if not rows:
            continue
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": preset,
                "x": [cpu_share(r) for r in rows],
                "y": [(r.settle_ns or 0) / 1e9 for r in rows],
                "text": [f"{preset}<br>{_label(r, grid_knobs)}" for r in rows],
                "hoverinfo": "text+x+y",
                "marker": {"size": 9},
            }
        )
    return {
        "data": data,
        "layout": {
            "title": {"text": "Time to settle vs ksmd CPU share while running"},
            "xaxis": {
                "title": {"text": "ksmd CPU share (%, modelled CPU / simulated time)"},
                "type": "log",
            },
            "yaxis": {"title": {"text": "simulated time to settle (s)"}, "type": "log"},
            "height": 520,
            "template": "plotly_white",
        },
    }


FIGURES = {
    "profit-vs-cpu": profit_cpu_figure,
    "time-to-settle": settle_figure,
    "settle-vs-cpu-share": tradeoff_figure,
}


def _table(results: Sequence[SweepResult]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in CSV_COLUMNS)
    body = []
    for r in results:
        row = result_row(r)
        body.append(
            "<tr>" + "".join(f"<td>{html.escape(row[c])}</td>" for c in CSV_COLUMNS) + "</tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_report(
    results: Sequence[SweepResult],
    grid_knobs: Sequence[str],
    costs: CpuCosts,
    command: str = "",
) -> str:
    """The whole HTML page (plotly.js inlined once; no network needed)."""
    config = {"displaylogo": False, "responsive": True}
    fig1 = pio.to_html(
        profit_cpu_figure(results, grid_knobs),
        include_plotlyjs=True,
        full_html=False,
        div_id="profit-vs-cpu",
        config=config,
    )
    fig2 = pio.to_html(
        settle_figure(results, grid_knobs),
        include_plotlyjs=False,
        full_html=False,
        div_id="time-to-settle",
        config=config,
    )
    fig3 = pio.to_html(
        tradeoff_figure(results, grid_knobs),
        include_plotlyjs=False,
        full_html=False,
        div_id="settle-vs-cpu-share",
        config=config,
    )
    knobs = ", ".join(k for k in SWEEP_KNOBS if k in grid_knobs) or "none"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>KSM Lab sweep</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; }}
th, td {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
th {{ background: #f3f3f3; }}
code {{ background: #f3f3f3; padding: 0 3px; }}
</style></head><body>
<h1>KSM Lab sweep</h1>
<p>{len(results)} simulated runs; grid knobs: {html.escape(knobs)}.
Command: <code>{html.escape(command)}</code></p>
<p>Settled: the end of the first full pass that changed none of pages_shared, pages_sharing,
ksm_zero_pages, rmap_items, stable_node_chains, stable_node_dups; time to settle is the
simulated time (per batch: modelled CPU + sleep_millisecs) of the last batch that changed
them. Modelled CPU per page: {costs.first_ns / 1000:g} us on its first scan,
{costs.later_ns / 1000:g} us on a later one, {costs.skip_ns / 1000:g} us when smart scan
skips it (docs/cpu-model.md).</p>
{fig1}
{fig2}
{fig3}
<h2>Runs</h2>
{_table(results)}
</body></html>
"""


def figure_page(results: Sequence[SweepResult], grid_knobs: Sequence[str], figure: str) -> str:
    """A page holding one figure only (for a static screenshot)."""
    fig = FIGURES[figure](results, grid_knobs)
    fig["layout"].update(width=1000, height=560)
    body = pio.to_html(
        fig,
        include_plotlyjs=True,
        full_html=False,
        div_id=figure,
        config={"displayModeBar": False, "staticPlot": True},
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head>'
        f'<body style="margin:0;background:#fff">{body}</body></html>'
    )


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def screenshot(page_html: str, png: Path, size: tuple[int, int] = (1000, 560)) -> str | None:
    """Render a page with headless chromium into a PNG; returns why not, or None if done.

    (kaleido, plotly's own image exporter, is not a project dependency.)
    """
    browser = find_chromium()
    if browser is None:
        return "no chromium found (install chromium, or open the HTML report instead)"
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "figure.html"
        page.write_text(page_html, encoding="utf-8")
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={size[0]},{size[1]}",
            "--virtual-time-budget=5000",
            f"--user-data-dir={tmp}/profile",
            f"--screenshot={png.resolve()}",
            page.as_uri(),
        ]
        try:
            subprocess.run(cmd, capture_output=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"chromium failed: {exc}"
    return None if png.exists() else "chromium wrote no screenshot"
