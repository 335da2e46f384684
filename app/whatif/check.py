"""``ksmlab whatif-check`` and ``ksmlab calibrate``: the what-if prediction against the real ksmd.

``whatif-check`` (root) starts a real workload on this host (``--workload guests``: idle qemu
guests, :class:`app.kernel.guests.Guests`; ``--workload python``: copies of a Python
interpreter under ``PR_SET_MEMORY_MERGE``, :class:`app.kernel.workloads.ProgramCopies`),
captures it with ksmd stopped (:func:`app.kernel.capture.capture_processes`), predicts
(:func:`app.whatif.predict.predict`, on the calibrated time model), then runs the real ksmd
with the same knobs for the same duration, sampling the global sysfs counters, ksmd's CPU
time and the workload's own ``/proc/PID/ksm_stat`` every ``--sample`` seconds. It writes
``OUT/check.csv`` (both curves on one time axis), ``OUT/check.html`` (offline plotly),
``OUT/check.json`` (the errors) and prints the errors against the targets:

- **final**: final pages_sharing + ksm_zero_pages, predicted vs kernel, within ±5%;
- **curve**: the savings at every 10% of the run, error relative to the kernel's final
  savings, within ±10%;
- **t90**: time to 90% of the final savings, within ±15%;
- **cpu**: ksmd's CPU share over the run, within ±25%.

The savings compared are the global ``pages_sharing + ksm_zero_pages`` when no other
process on the host has mergeable memory; otherwise the workload's own figures
(sum of ``ksm_merging_pages + ksm_zero_pages`` of its processes against the prediction's
``pages_shared + pages_sharing + ksm_zero_pages``), since other helpers' guests may merge too.

Host safety: the real run holds the host lock (:func:`app.kernel.guard.host_lock`) only
while ksmd runs; every knob is saved first and restored in a ``finally`` after a ``run=2``
(``run`` ends at 0); the workload is killed in a ``finally`` whatever happens.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import os
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sim.timemodel import MACHINE_COSTS, CpuCosts, load_calibration

#: the targets of issue 17 (fractions)
TARGETS = {"final": 0.05, "curve": 0.10, "t90": 0.15, "cpu": 0.25}
#: knobs the check sets on both sides (others keep the kernel's defaults)
CHECK_KNOBS = ("pages_to_scan", "sleep_millisecs", "use_zero_pages", "smart_scan", "advisor_mode")


@dataclass
class Sample:
    """One point of a curve (predicted or measured)."""

    t_s: float
    pages_shared: int
    pages_sharing: int
    ksm_zero_pages: int
    ksm_rmap_items: int
    full_scans: int
    cpu_ns: int
    #: the workload's own figures (kernel: sums of its ksm_stat; prediction: from globals)
    proc_merging: int = 0
    proc_zero: int = 0
    pages_to_scan: int = 0
    #: zero-page PTEs no counter shows (the prediction's THP splits; the kernel's are
    #: measured at the end only, :attr:`RealRun.uncounted_zero_pages`)
    uncounted_zero_pages: int = 0

    @property
    def savings(self) -> int:
        return self.pages_sharing + self.ksm_zero_pages

    @property
    def proc_savings(self) -> int:
        return self.proc_merging + self.proc_zero


@dataclass
class RealRun:
    samples: list[Sample] = field(default_factory=list)
    #: other processes with mergeable memory when the run started (pid list)
    others: list[int] = field(default_factory=list)
    ksmd_cpu0_ns: int = 0
    wall_s: float = 0.0
    #: PTEs of the workload mapping the shared zero page, before ksmd ran and at the end
    #: (KSM-placed ones included; see :func:`zero_page_ptes`)
    zero_ptes_start: int = 0
    zero_ptes_end: int = 0

    @property
    def uncounted_zero_pages(self) -> int:
        """Zero-page PTEs that appeared while ksmd ran but are not in ksm_zero_pages: the
        zero-filled subpages of transparent huge pages that KSM split (6.12+ maps them to
        the shared zero page when splitting). Memory saved that no KSM counter shows."""
        last = self.samples[-1] if self.samples else None
        counted = last.proc_zero if last is not None else 0
        return max(0, self.zero_ptes_end - self.zero_ptes_start - counted)


# ------------------------------------------------------------------------- the real ksmd
def _ksm_stat(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/ksm_stat").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[name] = int(value)
    return out


KPF_ZERO_PAGE = 24
PFN_MASK = (1 << 55) - 1


def zero_page_ptes(pids: Sequence[int]) -> int:
    """PTEs of the processes' private writable mappings that map the shared zero page
    (``/proc/PID/pagemap`` + ``/proc/kpageflags`` ``ZERO_PAGE``; root). Read-only."""
    total = 0
    zero_pfns: set[int] = set()
    other_pfns: set[int] = set()
    try:
        kf = open("/proc/kpageflags", "rb")  # noqa: SIM115 - closed below
    except OSError:
        return 0
    with kf:
        for pid in pids:
            try:
                maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
                pm = open(f"/proc/{pid}/pagemap", "rb")  # noqa: SIM115
            except OSError:
                continue
            with pm:
                for line in maps:
                    parts = line.split()
                    if len(parts) < 5 or "w" not in parts[1] or "p" not in parts[1]:
                        continue
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    pm.seek(lo // 4096 * 8)
                    data = pm.read((hi - lo) // 4096 * 8)
                    for (entry,) in struct.iter_unpack("<Q", data):
                        if not entry >> 63:
                            continue
                        pfn = entry & PFN_MASK
                        if pfn in zero_pfns:
                            total += 1
                        elif pfn and pfn not in other_pfns:
                            kf.seek(pfn * 8)
                            if int.from_bytes(kf.read(8), "little") >> KPF_ZERO_PAGE & 1:
                                zero_pfns.add(pfn)
                                total += 1
                            else:
                                other_pfns.add(pfn)
    return total


def run_real(
    pids: Sequence[int],
    knobs: dict[str, int | str],
    duration_s: float,
    *,
    sample_s: float = 1.0,
    log: Callable[[str], None] = lambda line: None,
) -> RealRun:
    """Run the real ksmd with ``knobs`` for ``duration_s`` seconds, sampling every
    ``sample_s``; every knob is restored (and everything unmerged) at the end."""
    from app.kernel.calibrate import ksmd_cpu_ns, ksmd_pid, mergeable_pids
    from app.kernel.guard import (
        KnobGuard,
        Refusal,
        check_privileges,
        host_lock,
        lock_file_path,
        state_file_path,
    )
    from app.kernel.sysfs import KsmSysfs

    s = KsmSysfs()
    check_privileges(s)
    kpid = ksmd_pid()
    run = RealRun()
    with host_lock(lock_file_path(), timeout=900, on_wait=log):
        if s.read("run") != 0:
            raise Refusal("ksmd is running (run != 0): someone uses KSM; not touching it")
        run.others = [p for p in mergeable_pids(os.getpid()) if p not in set(pids)]
        guard = KnobGuard(s, state_file_path())
        guard.save()
        try:
            s.write("run", 2)
            s.write("run", 0)
            mode = knobs.get("advisor_mode")
            if mode is not None and s.exists("advisor_mode"):
                s.write("advisor_mode", mode)
            for name in CHECK_KNOBS:
                if name == "advisor_mode" or name not in knobs or not s.exists(name):
                    continue
                if name == "pages_to_scan" and s.read("advisor_mode") not in (None, "none"):
                    continue  # the advisor sets it
                s.write(name, knobs[name])
            run.zero_ptes_start = zero_page_ptes(pids)
            run.ksmd_cpu0_ns = ksmd_cpu_ns(kpid)
            t0 = time.monotonic()
            s.write("run", 1)
            n = 0
            while True:
                now = time.monotonic() - t0
                c = s.counters()
                stats = [_ksm_stat(p) for p in pids]
                run.samples.append(
                    Sample(
                        t_s=round(now, 3),
                        pages_shared=c.get("pages_shared") or 0,
                        pages_sharing=c.get("pages_sharing") or 0,
                        ksm_zero_pages=c.get("ksm_zero_pages") or 0,
                        ksm_rmap_items=sum(st.get("ksm_rmap_items", 0) for st in stats),
                        full_scans=c.get("full_scans") or 0,
                        cpu_ns=ksmd_cpu_ns(kpid) - run.ksmd_cpu0_ns,
                        proc_merging=sum(st.get("ksm_merging_pages", 0) for st in stats),
                        proc_zero=sum(st.get("ksm_zero_pages", 0) for st in stats),
                        pages_to_scan=s.read_int("pages_to_scan") or 0,
                    )
                )
                if now >= duration_s:
                    break
                n += 1
                time.sleep(max(0.0, t0 + n * sample_s - time.monotonic()))
            run.wall_s = time.monotonic() - t0
            s.write("run", 0)  # stop ksmd, keep its merges while the PTEs are counted
            run.zero_ptes_end = zero_page_ptes(pids)
        finally:
            problems = guard.restore()
            if s.read("run") != 0:
                s.write("run", 0)
            if problems:
                log(f"knobs not restored: {problems}")
    return run


# ----------------------------------------------------------------------------- compare
def _at(samples: Sequence[Sample], t: float, value: Callable[[Sample], int]) -> int:
    """The curve's value at ``t`` (the last sample at or before it)."""
    best = samples[0]
    for s in samples:
        if s.t_s <= t + 1e-9:
            best = s
        else:
            break
    return value(best)


def time_to(samples: Sequence[Sample], fraction: float, value: Callable[[Sample], int]) -> float:
    """First time the curve reaches ``fraction`` of its final value (0 when that is 0)."""
    final = value(samples[-1])
    if final <= 0:
        return 0.0
    for s in samples:
        if value(s) >= fraction * final:
            return s.t_s
    return samples[-1].t_s


def _rel(pred: float, real: float) -> float | None:
    return None if real == 0 else (pred - real) / real


def compare(
    predicted: Sequence[Sample], real: RealRun, duration_s: float, *, own: bool | None = None
) -> dict[str, Any]:
    """The error figures (fractions; see the module doc) and the values behind them.

    ``own``: compare the workload's own figures (default: when other processes merge)."""
    if own is None:
        own = bool(real.others)

    def pv(s: Sample) -> int:
        return s.pages_shared + s.pages_sharing + s.ksm_zero_pages if own else s.savings

    def rv(s: Sample) -> int:
        return s.proc_savings if own else s.savings

    pf, rf = pv(predicted[-1]), rv(real.samples[-1])
    pu = predicted[-1].uncounted_zero_pages
    curve = []
    for k in range(1, 11):
        t = duration_s * k / 10
        p, r = _at(predicted, t, pv), _at(real.samples, t, rv)
        curve.append(
            {
                "t_s": round(t, 3),
                "predicted": p,
                "kernel": r,
                "error": None if rf == 0 else (p - r) / rf,
            }
        )
    t90p, t90r = time_to(predicted, 0.9, pv), time_to(real.samples, 0.9, rv)
    cpu_p = predicted[-1].cpu_ns / (predicted[-1].t_s * 1e9) if predicted[-1].t_s else 0.0
    cpu_r = real.samples[-1].cpu_ns / (real.wall_s * 1e9) if real.wall_s else 0.0
    errors = {
        "final": _rel(pf, rf),
        "curve": max((abs(c["error"]) for c in curve if c["error"] is not None), default=None),
        "t90": _rel(t90p, t90r),
        "cpu": _rel(cpu_p, cpu_r),
    }
    return {
        "compared": "workload ksm_stat" if own else "global sysfs",
        "final": {"predicted": pf, "kernel": rf},
        "t90_s": {"predicted": t90p, "kernel": t90r},
        "cpu_share": {"predicted": round(cpu_p, 5), "kernel": round(cpu_r, 5)},
        "curve": curve,
        "errors": errors,
        "within": {
            k: (v is not None and abs(v) <= TARGETS[k]) for k, v in errors.items() if k in TARGETS
        },
        "others": real.others,
        "zero_page_ptes": {
            "start": real.zero_ptes_start,
            "end": real.zero_ptes_end,
            "uncounted": real.uncounted_zero_pages,
            "predicted_uncounted": pu,
            "error": _rel(pu, real.uncounted_zero_pages),
        },
        # the memory saved, counters plus the zero pages no counter shows, on both sides
        "final_memory": {
            "predicted": pf + pu,
            "kernel": rf + real.uncounted_zero_pages,
            "error": _rel(pf + pu, rf + real.uncounted_zero_pages),
        },
    }


# ---------------------------------------------------------------------------- outputs
def curves_csv(predicted: Sequence[Sample], real: Sequence[Sample]) -> str:
    """Both curves, one row per sample: ``side`` is ``predicted`` or ``kernel``."""
    buf = io.StringIO()
    names = list(Sample.__dataclass_fields__)
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["side", *names, "savings", "proc_savings"])
    for side, samples in (("predicted", predicted), ("kernel", real)):
        for s in samples:
            d = asdict(s)
            w.writerow([side, *(d[n] for n in names), s.savings, s.proc_savings])
    return buf.getvalue()


def curves_figure(
    predicted: Sequence[Sample], real: Sequence[Sample], result: dict[str, Any], title: str
) -> dict[str, Any]:
    own = result["compared"] != "global sysfs"

    def pv(s: Sample) -> int:
        return s.pages_shared + s.pages_sharing + s.ksm_zero_pages if own else s.savings

    def rv(s: Sample) -> int:
        return s.proc_savings if own else s.savings

    mib = 4096 / 2**20
    e = result["errors"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v * 100:+.1f}%"

    sub = (
        f"final {pct(e['final'])}, curve max {pct(e['curve'])}, "
        f"t90 {pct(e['t90'])}, CPU share {pct(e['cpu'])}"
    )
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "lines",
                "name": "kernel (measured)",
                "x": [s.t_s for s in real],
                "y": [round(rv(s) * mib, 2) for s in real],
                "line": {"color": "#1f77b4", "width": 3},
            },
            {
                "type": "scatter",
                "mode": "lines",
                "name": "simulator (predicted)",
                "x": [s.t_s for s in predicted],
                "y": [round(pv(s) * mib, 2) for s in predicted],
                "line": {"color": "#ff7f0e", "width": 2, "dash": "dash"},
            },
        ],
        "layout": {
            "title": {
                "text": f"{title}<br><sub>{sub}</sub>",
                "font": {"size": 15},
            },
            "xaxis": {"title": {"text": "time since ksmd started (s)"}, "rangemode": "tozero"},
            "yaxis": {
                "title": {"text": "memory saved (MiB)"},
                "rangemode": "tozero",
            },
            "template": "plotly_white",
            "legend": {"x": 0.99, "xanchor": "right", "y": 0.02, "yanchor": "bottom"},
        },
    }


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:+.1f}%"


def render_html(fig: dict[str, Any], result: dict[str, Any], command: str) -> str:
    import plotly.io as pio  # type: ignore[import-untyped]

    body = pio.to_html(
        fig,
        include_plotlyjs=True,
        full_html=False,
        div_id="whatif-check",
        config={"displaylogo": False, "responsive": True},
    )
    rows = "".join(
        f"<tr><td>{c['t_s']}</td><td>{c['predicted']}</td><td>{c['kernel']}</td>"
        f"<td>{_pct(c['error'])}</td></tr>"
        for c in result["curve"]
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>KSM Lab what-if check</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}</style></head>
<body><h1>What-if prediction against the real ksmd</h1>
<p>Command: <code>{html.escape(command)}</code>. Compared: {html.escape(result["compared"])}.</p>
{body}
<h2>Savings at every 10% of the run (pages)</h2>
<table><tr><th>t (s)</th><th>predicted</th><th>kernel</th><th>error / kernel final</th></tr>
{rows}</table>
<pre>{
        html.escape(
            json.dumps(
                {k: result[k] for k in ("final", "t90_s", "cpu_share", "errors", "within")},
                indent=1,
            )
        )
    }</pre>
</body></html>
"""


def screenshot_png(page: Path, png: Path, size: tuple[int, int] = (1000, 560)) -> str | None:
    """Render the HTML in Chromium with Playwright; returns why not, or None when done."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "playwright is not installed"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium")
            try:
                tab = browser.new_page(viewport={"width": size[0], "height": size[1]})
                tab.goto(page.resolve().as_uri())
                tab.wait_for_selector("#whatif-check .main-svg", timeout=30_000)
                tab.locator("#whatif-check").screenshot(path=str(png))
            finally:
                browser.close()
    except Exception as exc:  # noqa: BLE001 - any browser failure is reported, not raised
        return f"chromium failed: {exc}"
    return None


# ---------------------------------------------------------------------------- the check
def _predict(
    capture: Any,
    knobs: dict[str, Any],
    duration_s: float,
    costs: CpuCosts,
    sample_s: float,
    cpu_base_ns: int,
) -> list[Sample]:
    from app.whatif.predict import predict

    pred = predict(
        capture,
        "6.18",
        knobs,
        duration_s=duration_s,
        costs=costs,
        sample_s=sample_s,
        cpu_base_ns=cpu_base_ns,
    )
    return [sample_of(r) for r in pred.samples]


def sample_of(record: Any) -> Sample:
    """A prediction's sample record (a mapping or an object with those attributes)."""

    def get(name: str) -> Any:
        return record[name] if isinstance(record, dict) else getattr(record, name)

    return Sample(
        t_s=float(get("t_s")),
        pages_shared=int(get("pages_shared")),
        pages_sharing=int(get("pages_sharing")),
        ksm_zero_pages=int(get("ksm_zero_pages")),
        ksm_rmap_items=int(get("ksm_rmap_items")),
        full_scans=int(get("full_scans")),
        cpu_ns=int(get("cpu_ns"))
        if _has(record, "cpu_ns")
        else round(float(get("ksmd_cpu_s")) * 1e9),
        pages_to_scan=int(get("pages_to_scan")) if _has(record, "pages_to_scan") else 0,
        uncounted_zero_pages=int(get("uncounted_zero_pages"))
        if _has(record, "uncounted_zero_pages")
        else 0,
    )


def _has(record: Any, name: str) -> bool:
    return name in record if isinstance(record, dict) else hasattr(record, name)


def whatif_check(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    from app.kernel.calibrate import ksmd_cpu_ns, ksmd_pid
    from app.kernel.capture import capture_processes
    from app.kernel.guests import Guests
    from app.kernel.workloads import ProgramCopies

    calibration = args.calibration
    if calibration is None and _default_calibration().exists():
        calibration = _default_calibration()
    costs = load_calibration(calibration) if calibration else MACHINE_COSTS
    knobs: dict[str, Any] = {
        "pages_to_scan": args.pages_to_scan,
        "sleep_millisecs": args.sleep_millisecs,
        "use_zero_pages": args.use_zero_pages,
        "smart_scan": 1,
    }
    if args.advisor:  # the advisor sets pages_to_scan (from advisor_min_pages_to_scan)
        del knobs["pages_to_scan"]
        knobs["advisor_mode"] = "scan-time"
    workload: Guests | ProgramCopies
    if args.workload == "guests":
        workload = Guests(args.count or 3, args.guest_kernel, args.guest_mb)
    else:
        workload = ProgramCopies(args.count or 4)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        log(f"starting the workload ({args.workload})")
        pids = workload.start()
        time.sleep(args.settle)  # let boot-time writes calm down
        log(f"capturing {len(pids)} processes (ksmd stopped)")
        capture = capture_processes(pids, memcmp_order=args.class_order == "memcmp")
        cpu_base = ksmd_cpu_ns(ksmd_pid())
        log("predicting")
        predicted = _predict(capture, knobs, args.duration, costs, args.sample, cpu_base)
        log(f"running the real ksmd for {args.duration:g} s")
        real = run_real(pids, knobs, args.duration, sample_s=args.sample, log=log)
    finally:
        workload.stop()
    result = compare(predicted, real, args.duration)
    result.update(workload=args.workload, knobs=knobs, costs=costs.as_dict(), pids=pids)
    result["class_order"] = capture.class_order
    result["command"] = "ksmlab " + " ".join(sys.argv[1:])
    command = "ksmlab " + " ".join(sys.argv[1:])
    (out / "check.csv").write_text(curves_csv(predicted, real.samples), encoding="utf-8")
    (out / "check.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    title = (
        f"{args.workload}: {len(pids)} processes<br><sub>"
        + ", ".join(f"{k}={v}" for k, v in knobs.items())
        + "</sub>"
    )
    page = out / "check.html"
    page.write_text(
        render_html(curves_figure(predicted, real.samples, result, title), result, command),
        encoding="utf-8",
    )
    if args.png:
        why = screenshot_png(page, Path(args.png))
        if why:
            log(f"no PNG: {why}")
    return result


def replot(out: Path, png: Path | None = None) -> str | None:
    """Write ``out/check.html`` again (and a PNG) from ``check.csv`` and ``check.json``."""
    result = json.loads((out / "check.json").read_text(encoding="utf-8"))
    sides: dict[str, list[Sample]] = {"predicted": [], "kernel": []}
    with (out / "check.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            values = {n: row[n] for n in Sample.__dataclass_fields__}
            sides[row["side"]].append(
                Sample(float(values.pop("t_s")), **{n: int(v) for n, v in values.items()})
            )
    knobs = ", ".join(f"{k}={v}" for k, v in result.get("knobs", {}).items())
    title = f"{result.get('workload', '')}: {len(result.get('pids', []))} processes"
    fig = curves_figure(
        sides["predicted"], sides["kernel"], result, f"{title}<br><sub>{knobs}</sub>"
    )
    page = out / "check.html"
    page.write_text(render_html(fig, result, result.get("command", "")), encoding="utf-8")
    return screenshot_png(page, png) if png is not None else None


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def cmd_whatif_check(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        _err("ksmlab whatif-check: must run as root (KSM knobs, /proc/PID/mem)")
        return 2
    if args.duration <= 0 or args.sample <= 0:
        _err("ksmlab whatif-check: --duration and --sample must be positive")
        return 2
    try:
        result = whatif_check(args, lambda line: _err(f"whatif-check: {line}"))
    except ImportError as exc:
        _err(f"ksmlab whatif-check: {exc} (needs app.kernel.capture and app.whatif.predict)")
        return 2
    except (ValueError, RuntimeError, OSError) as exc:
        _err(f"ksmlab whatif-check: {exc}")
        return 2
    e = result["errors"]
    for k, target in TARGETS.items():
        v = e[k]
        shown = "n/a" if v is None else f"{v * 100:+.1f}%"
        mark = "ok" if result["within"][k] else "OUTSIDE"
        _out(f"{k:6s} {shown:>8s}  (target ±{target * 100:.0f}%)  {mark}")
    _out(f"written: {args.out}/check.csv, check.html, check.json")
    return 0 if all(result["within"].values()) else 1


def _default_calibration() -> Path:
    from app.config import get_settings

    return get_settings().data_dir / "calibration.json"


def cmd_calibrate(args: argparse.Namespace) -> int:
    from app.kernel.calibrate import calibrate
    from app.kernel.guard import Refusal

    if args.pages < 100 or args.rounds < 1:
        _err("ksmlab calibrate: --pages must be at least 100 and --rounds at least 1")
        return 2
    out = Path(args.out) if args.out else _default_calibration()
    try:
        doc = calibrate(
            pages=args.pages, rounds=args.rounds, force=args.force, log=lambda s: _err(s)
        )
    except Refusal as exc:
        _err(f"ksmlab calibrate: {exc}")
        return 2
    except RuntimeError as exc:
        _err(f"ksmlab calibrate: {exc}")
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    c = doc["costs"]
    _out(
        "costs (ns): "
        + ", ".join(f"{k[:-3]} {v}" for k, v in c.items())
        + f"\nwritten: {out} (use: ksmlab sweep --calibration {out})"
    )
    return 0


def register(sub: Any) -> None:
    c = sub.add_parser(
        "calibrate",
        help="measure ksmd's costs on this kernel (root), write a calibration file",
        description="Measure ksmd's CPU per page by kind and per pass on this machine's "
        "kernel (docs/cpu-model.md); the file feeds `sweep --calibration` and whatif-check.",
    )
    c.add_argument("--pages", type=int, default=20_000, help="pages per area (20000)")
    c.add_argument("--rounds", type=int, default=3, help="rounds; the median is kept (3)")
    c.add_argument("--out", help="calibration file (default DATA_DIR/calibration.json)")
    c.add_argument("--force", action="store_true", help="run even if others use KSM")
    c.set_defaults(func=cmd_calibrate)

    w = sub.add_parser(
        "whatif-check",
        help="predict a real workload, run the real ksmd, compare the curves (root)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    w.add_argument("--workload", choices=("guests", "python"), default="python")
    w.add_argument("--count", type=int, help="guests (3) or program copies (4)")
    w.add_argument("--guest-kernel", default="6.12", help="Debian kernel of the guests")
    w.add_argument("--guest-mb", type=int, default=256, help="RAM per guest, MiB (256)")
    w.add_argument("--duration", type=float, default=60.0, help="seconds of ksmd (60)")
    w.add_argument("--sample", type=float, default=1.0, help="sampling period, s (1)")
    w.add_argument("--settle", type=float, default=5.0, help="wait before capture, s (5)")
    w.add_argument("--pages-to-scan", type=int, default=1000)
    w.add_argument("--sleep-millisecs", type=int, default=20)
    w.add_argument("--use-zero-pages", type=int, choices=(0, 1), default=1)
    w.add_argument("--advisor", action="store_true", help="advisor_mode=scan-time")
    w.add_argument(
        "--class-order",
        choices=("memcmp", "salted"),
        default="memcmp",
        help="the capture's class order: memcmp (the pages' byte order, which the kernel's "
        "trees follow; the default here, the workload is this command's own) or salted "
        "(what a plain `ksmlab capture` writes)",
    )
    w.add_argument(
        "--calibration",
        help="calibration file (default DATA_DIR/calibration.json if present, else this "
        "machine's figures, sim.timemodel.MACHINE_COSTS)",
    )
    w.add_argument("--out", default="out/whatif-check", help="output directory")
    w.add_argument("--png", help="also render the plot to this PNG (Playwright + Chromium)")
    w.set_defaults(func=cmd_whatif_check)
