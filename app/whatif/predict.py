"""The what-if prediction of a capture: what KSM will do over time with these knobs.

:func:`predict` rebuilds the captured memory in the simulator (:mod:`sim.fromcapture`:
"KSM off, nothing merged", then ``run=1`` with the knobs), then feeds a
:class:`sim.stepper.Stepper` one ksmd batch at a time, advancing simulated time with the
time model (:mod:`sim.timemodel`: each batch costs its modelled CPU plus
``sleep_millisecs``), applying the captured pages' writes as they fall due
(:class:`sim.fromcapture.WriteSchedule`: new unique content, injected as ``write`` ops),
and samples the counters every ``sample_s`` simulated seconds (:class:`Sample`).

The summary (:meth:`Prediction.summary`): the final savings (``pages_sharing +
ksm_zero_pages`` pages, in bytes), the simulated time at which the savings first reached
50% and 90% of that final value, ksmd's CPU share (modelled CPU over simulated time), and
the memory KSM itself costs (``ksm_rmap_items`` x 64 bytes + stable nodes x 48 bytes, the
sizes of ``struct ksm_rmap_item`` and ``struct ksm_stable_node`` on x86_64).

The capture's memcmp order (when it has one) and its transparent huge pages are applied
after the story (:func:`sim.fromcapture.apply_capture`): on 6.12+ a split maps the huge
pages' zero-filled pages to the zero page, memory saved that no counter shows. Each sample
and the summary report them apart
(``uncounted_zero_pages``: zero-page PTEs that appeared since the start and are not in
``ksm_zero_pages``, what ``ksmlab whatif-check`` measures on the kernel with pagemap), so
that counters compare with counters and memory with memory; the savings stay the counters'.

``ksmlab predict CAPTURE [--kernel V] [--knob k=v ...] [--duration S] [--merge MODE]
[--ksmd-cpu-s S] [--csv OUT] [--html OUT]`` prints the summary (and writes the samples as
CSV, or as an offline plotly HTML page). Exit status 2 for a bad capture or knob (one line).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sim import Kernel, KnobError, SimError
from sim.capture import Capture, CaptureError, load_capture
from sim.fromcapture import (
    MERGE_MODES,
    PageRef,
    WriteSchedule,
    apply_capture,
    capture_notes,
    capture_scenario,
)
from sim.kernel import PAGE_SIZE, RMAP_ITEM_SIZE
from sim.scenario import KERNELS, Step
from sim.stepper import Inject, Next, Stepper
from sim.timemodel import BatchClock, CpuCosts, TimeAccount

#: ``sizeof(struct ksm_stable_node)`` on x86_64 (the slab object: 48 bytes)
STABLE_NODE_SIZE = 48
#: counters whose stillness over a full pass means "settled" (as in the sweep)
WATCHED = (
    "pages_shared",
    "pages_sharing",
    "ksm_zero_pages",
    "ksm_rmap_items",
    "stable_node_chains",
    "stable_node_dups",
)
#: most ksmd batches one prediction runs (a guard against absurd knobs)
MAX_BATCHES = 5_000_000


@dataclass(frozen=True)
class Sample:
    """The counters at simulated time ``t_s`` (the state after the last batch before it)."""

    t_s: float
    pages_shared: int
    pages_sharing: int
    ksm_zero_pages: int
    general_profit: int
    ksm_rmap_items: int
    full_scans: int
    ksmd_cpu_s: float  # ksmd's modelled CPU so far
    stable_node_chains: int = 0
    pages_scanned: int = 0
    writes: int = 0  # captured writes applied so far
    pages_to_scan: int = 0  # the knob's value (the scan-time advisor changes it)
    #: zero-page PTEs that appeared since the start and no counter shows (THP splits)
    uncounted_zero_pages: int = 0

    @property
    def savings_pages(self) -> int:
        return self.pages_sharing + self.ksm_zero_pages

    @property
    def savings_bytes(self) -> int:
        return self.savings_pages * PAGE_SIZE


@dataclass
class Prediction:
    kernel: str
    knobs: dict[str, Any]
    merge: str
    duration_s: float
    costs: CpuCosts
    samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    capture_stats: dict[str, Any] = field(default_factory=dict)
    cpu_ns: int = 0
    now_ns: int = 0
    batches: int = 0
    writes: int = 0
    #: the last full pass changed none of :data:`WATCHED` (with writes, rarely true)
    settled: bool = False
    #: simulated time of the last batch that changed one of :data:`WATCHED`
    last_change_ns: int = 0
    pages_shared: int = 0
    pages_sharing: int = 0
    ksm_zero_pages: int = 0
    ksm_rmap_items: int = 0
    stable_nodes: int = 0
    general_profit: int = 0
    full_scans: int = 0
    pages_scanned: int = 0
    pages_skipped: int = 0
    first_pass_pages: int = 0
    later_pass_pages: int = 0
    #: page-cache pages ksmd walks every full pass (charged ``file_ns`` each)
    walked_file_pages: int = 0
    elapsed_s: float = 0.0  # wall-clock time of the prediction
    #: pages in transparent huge pages at the start, huge pages KSM split, and the
    #: zero-page PTEs that appeared and no counter shows (see the module docstring)
    thp_pages: int = 0
    thp_splits: int = 0
    uncounted_zero_pages: int = 0

    @property
    def savings_bytes(self) -> int:
        return (self.pages_sharing + self.ksm_zero_pages) * PAGE_SIZE

    def time_to(self, fraction: float) -> float | None:
        """Simulated seconds until the savings first reached ``fraction`` of the final."""
        final = self.pages_sharing + self.ksm_zero_pages
        if final <= 0:
            return None
        goal = fraction * final
        for s in self.samples:
            if s.savings_pages >= goal:
                return s.t_s
        return None

    @property
    def cpu_share(self) -> float | None:
        return self.cpu_ns / self.now_ns if self.now_ns else None

    @property
    def ksm_memory_bytes(self) -> int:
        return self.ksm_rmap_items * RMAP_ITEM_SIZE + self.stable_nodes * STABLE_NODE_SIZE

    def summary(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "knobs": dict(self.knobs),
            "merge": self.merge,
            "duration_s": self.duration_s,
            "savings_bytes": self.savings_bytes,
            "pages_sharing": self.pages_sharing,
            "ksm_zero_pages": self.ksm_zero_pages,
            "pages_shared": self.pages_shared,
            "general_profit": self.general_profit,
            "t50_s": self.time_to(0.5),
            "t90_s": self.time_to(0.9),
            "cpu_share": self.cpu_share,
            "ksmd_cpu_s": self.cpu_ns / 1e9,
            "ksm_rmap_items": self.ksm_rmap_items,
            "stable_nodes": self.stable_nodes,
            "ksm_memory_bytes": self.ksm_memory_bytes,
            "full_scans": self.full_scans,
            "walked_file_pages": self.walked_file_pages,
            "writes": self.writes,
            "thp_pages": self.thp_pages,
            "thp_splits": self.thp_splits,
            "uncounted_zero_pages": self.uncounted_zero_pages,
            "settled": self.settled,
            "notes": list(self.notes),
        }

    def summary_text(self) -> str:
        s = self.summary()
        mib = 1 << 20

        def secs(v: float | None) -> str:
            return "never" if v is None else f"{v:g} s"

        knobs = " ".join(f"{k}={v}" for k, v in sorted(self.knobs.items())) or "defaults"
        share = s["cpu_share"]
        lines = [
            f"kernel {self.kernel}, {knobs}, merge mode {self.merge}, "
            f"{self.duration_s:g} simulated s",
            f"savings after {self.duration_s:g} s: {s['savings_bytes'] / mib:,.1f} MiB "
            f"(pages_sharing {s['pages_sharing']}, ksm_zero_pages {s['ksm_zero_pages']}, "
            f"pages_shared {s['pages_shared']}); general_profit "
            f"{s['general_profit'] / mib:,.1f} MiB",
            f"time to 50% of it: {secs(s['t50_s'])}; to 90%: {secs(s['t90_s'])}",
            f"ksmd CPU: {s['ksmd_cpu_s']:.2f} s, "
            + ("n/a" if share is None else f"{100 * share:.1f}% of one CPU")
            + f" over {s['full_scans']} full scans",
            f"memory KSM costs: {s['ksm_memory_bytes'] / mib:,.2f} MiB "
            f"({s['ksm_rmap_items']} rmap_items x {RMAP_ITEM_SIZE} B, "
            f"{s['stable_nodes']} stable nodes x {STABLE_NODE_SIZE} B)",
            f"captured writes replayed: {s['writes']}",
        ]
        if s["thp_pages"]:
            lines.append(
                f"transparent huge pages: {s['thp_pages']} pages at the start, "
                f"{s['thp_splits']} huge pages split; {s['uncounted_zero_pages']} zero-filled "
                f"pages then mapped to the zero page, counted by no KSM counter "
                f"({s['uncounted_zero_pages'] * PAGE_SIZE / mib:,.1f} MiB more saved)"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def csv(self) -> str:
        buf = io.StringIO()
        names = [f.name for f in fields(Sample)] + ["savings_bytes"]
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(names)
        for s in self.samples:
            row = asdict(s)
            row["savings_bytes"] = s.savings_bytes
            w.writerow([row[n] for n in names])
        return buf.getvalue()


def _write_step(proc: str, vma: str, pages: list[int]) -> Step:
    pages = sorted(set(pages))
    ranges: list[tuple[int, int]] = []
    for i in pages:
        if ranges and ranges[-1][1] == i:
            ranges[-1] = (ranges[-1][0], i + 1)
        else:
            ranges.append((i, i + 1))
    spec = [f"{a}-{b - 1}" if b - a > 1 else str(a) for a, b in ranges]
    raw = {"op": "write", "proc": proc, "vma": vma, "pages": spec, "content": "unique"}
    return Step(-1, "write", proc=proc, vma=vma, pages=tuple(ranges), content="unique", raw=raw)


def _stable_nodes(k: Kernel) -> int:
    """Stable nodes alive: one per KSM page, plus each chain's own node."""
    return int(k.pages_shared) + int(k.stable_node_chains)


def predict(
    capture: Capture,
    kernel: str = "6.18",
    knobs: dict[str, Any] | None = None,
    *,
    duration_s: float,
    costs: CpuCosts | None = None,
    sample_s: float = 1.0,
    merge: str = "captured",
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
    cpu_base_ns: int = 0,
) -> Prediction:
    """Predict what KSM does to ``capture`` over ``duration_s`` simulated seconds.

    ``kernel`` is a simulator profile ("6.18", ...), ``knobs`` sysfs values set before
    ``run=1``; ``merge`` a merge mode of :data:`sim.fromcapture.MERGE_MODES`; ``seed`` fixes
    the write schedule. ``progress(fraction)`` is called now and then. ``cpu_base_ns`` is
    ksmd's CPU time before KSM starts: with ``advisor_mode=scan-time`` the kernel's first
    advisor step compares the first pass against ksmd's CPU time since boot (switching the
    mode zeroes the advisor's context), so on a host where ksmd has run before, the first
    pass's pages_to_scan falls to the floor (``ksmlab whatif-check`` passes the real
    ksmd's runtime). Every full pass is also charged the page-cache pages ksmd walks in the
    capture's mergeable file mappings (:meth:`sim.capture.Capture.walked_file_pages`,
    ``costs.file_ns`` each). Raises
    :class:`sim.SimError` (a knob the kernel refuses: :class:`sim.KnobError`) or
    ValueError for bad arguments.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r} (known: {', '.join(KERNELS)})")
    if duration_s <= 0 or sample_s <= 0:
        raise ValueError("duration and sample interval must be > 0")
    if cpu_base_ns < 0:
        raise ValueError("ksmd's CPU time so far (--ksmd-cpu-s) must not be negative")
    wall0 = time.monotonic()
    costs = costs or CpuCosts()
    knobs = dict(knobs or {})
    sc = capture_scenario(capture, kernel, knobs, merge)
    k = Kernel(kernel, sc.sysfs, record=True)
    st = Stepper(k, sc.steps)
    while st.in_scenario:
        out = st.feed(Next("batch"))
        if out is not None and out.error is not None:
            raise out.error
    thp_pages = apply_capture(k, capture)  # its memcmp order and huge pages
    zero_ptes0 = k.zero_page_ptes()
    counts_zero = k.profile.zero_page_series
    pred = Prediction(
        kernel,
        knobs,
        merge,
        duration_s,
        costs,
        notes=capture_notes(capture),
        capture_stats=capture.stats(),
    )
    sched = WriteSchedule(capture, seed)
    acct = TimeAccount()
    # the time model's batch clock (pages by kind, per-pass costs including the page-cache
    # pages walked in file mappings, the scan-time advisor)
    pred.walked_file_pages = capture.walked_file_pages(merge)
    clock = BatchClock(k, costs, acct, cpu_base_ns, pred.walked_file_pages)
    end_ns = round(duration_s * 1e9)
    step_ns = max(1, round(sample_s * 1e9))
    next_sample = 0
    writes = 0

    def uncounted() -> int:
        counted = int(k.ksm_zero_pages) if counts_zero else 0
        return max(0, k.zero_page_ptes() - zero_ptes0 - counted)

    def sample(t_ns: int) -> Sample:
        profit = k.global_counters()["general_profit"]
        if profit is None:
            profit = k.pages_sharing * PAGE_SIZE - k.ksm_rmap_items * RMAP_ITEM_SIZE
        return Sample(
            round(t_ns / 1e9, 9),
            int(k.pages_shared),
            int(k.pages_sharing),
            int(k.ksm_zero_pages),
            int(profit),
            int(k.ksm_rmap_items),
            int(k.seqnr),
            acct.cpu_ns / 1e9,
            int(k.stable_node_chains),
            int(k.pages_scanned),
            writes,
            int(k.knobs["pages_to_scan"]),
            uncounted(),
        )

    def watched() -> tuple[int, ...]:
        return tuple(int(getattr(k, n)) for n in WATCHED)

    pass_start = watched()
    last_pass_quiet = False
    reported = 0.0
    while True:
        # the captured writes due by now
        due: dict[tuple[str, str], list[int]] = {}
        ref: PageRef
        for ref in sched.due(acct.now_ns):
            due.setdefault((ref.proc, ref.vma), []).append(ref.page)
        for (proc, vma), pages in due.items():
            out = st.feed(Inject(_write_step(proc, vma, pages)))
            if out is not None and out.error is not None:
                raise out.error
            writes += len(pages)
        if acct.now_ns >= end_ns:
            break
        if k.ksmd_should_run:
            if acct.batches >= MAX_BATCHES:
                raise SimError(f"more than {MAX_BATCHES} ksmd batches: choose other knobs")
            if k.knobs["pages_to_scan"] == 0:
                raise SimError("pages_to_scan=0: ksmd makes no progress")
            # the samples up to the batch's start show the state before it
            while next_sample <= min(acct.now_ns, end_ns):
                pred.samples.append(sample(next_sample))
                next_sample += step_ns
            before = watched()
            seq0 = k.seqnr
            clock.before()
            out = st.feed(Next("batch"))
            assert out is not None
            # charges the account itself (and runs the advisor)
            clock.after(int(out.what.get("scanned", 0)))
            now = watched()
            if now != before:
                pred.last_change_ns = acct.now_ns
            if k.seqnr != seq0:
                last_pass_quiet = now == pass_start
                pass_start = now
        else:  # ksmd sleeps until the next write (or the end)
            nxt = sched.next_ns
            target = end_ns if nxt is None else min(end_ns, max(nxt, acct.now_ns + 1))
            while next_sample <= min(target, end_ns):
                pred.samples.append(sample(next_sample))
                next_sample += step_ns
            acct.now_ns = max(acct.now_ns, target)
        if progress is not None and acct.now_ns / end_ns - reported >= 0.01:
            reported = acct.now_ns / end_ns
            progress(min(1.0, reported))
    while next_sample <= end_ns:
        pred.samples.append(sample(next_sample))
        next_sample += step_ns
    counters = k.global_counters()
    pred.cpu_ns = acct.cpu_ns
    pred.now_ns = acct.now_ns
    pred.batches = acct.batches
    pred.writes = writes
    pred.settled = last_pass_quiet or not k.ksmd_should_run
    pred.pages_shared = int(k.pages_shared)
    pred.pages_sharing = int(k.pages_sharing)
    pred.ksm_zero_pages = int(k.ksm_zero_pages)
    pred.ksm_rmap_items = int(k.ksm_rmap_items)
    pred.stable_nodes = _stable_nodes(k)
    profit = counters["general_profit"]
    pred.general_profit = int(
        profit
        if profit is not None
        else k.pages_sharing * PAGE_SIZE - k.ksm_rmap_items * RMAP_ITEM_SIZE
    )
    pred.full_scans = int(k.seqnr)
    pred.pages_scanned = int(k.pages_scanned)
    pred.pages_skipped = int(k.pages_skipped)
    pred.first_pass_pages = acct.first
    pred.later_pass_pages = acct.later
    pred.thp_pages = thp_pages
    pred.thp_splits = int(k.thp_splits)
    pred.uncounted_zero_pages = uncounted()
    pred.elapsed_s = time.monotonic() - wall0
    return pred


# --------------------------------------------------------------------------- HTML
def prediction_html(pred: Prediction, title: str = "capture") -> str:
    """One self-contained page (plotly.js inlined, no network): savings and ksmd CPU
    against simulated time, and the summary."""
    import html

    import plotly.io as pio  # type: ignore[import-untyped]

    t = [s.t_s for s in pred.samples]
    mib = 1 << 20
    fig = {
        "data": [
            {
                "type": "scatter",
                "mode": "lines",
                "name": "savings (pages_sharing + ksm_zero_pages), MiB",
                "x": t,
                "y": [s.savings_bytes / mib for s in pred.samples],
            },
            {
                "type": "scatter",
                "mode": "lines",
                "name": "general_profit, MiB",
                "x": t,
                "y": [s.general_profit / mib for s in pred.samples],
            },
            {
                "type": "scatter",
                "mode": "lines",
                "name": "ksmd CPU so far, s",
                "yaxis": "y2",
                "x": t,
                "y": [s.ksmd_cpu_s for s in pred.samples],
            },
        ],
        "layout": {
            "title": {"text": f"Predicted KSM savings: {title}"},
            "xaxis": {"title": {"text": "simulated time (s)"}},
            "yaxis": {"title": {"text": "MiB"}},
            "yaxis2": {"title": {"text": "CPU s"}, "overlaying": "y", "side": "right"},
            "legend": {"orientation": "h", "y": -0.2},
            "template": "plotly_white",
        },
    }
    plot = pio.to_html(fig, include_plotlyjs=True, full_html=False)
    summary = html.escape(pred.summary_text())
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>KSM prediction: {html.escape(title)}</title></head><body>"
        f"<h1>KSM prediction: {html.escape(title)}</h1>{plot}"
        f"<pre style='white-space:pre-wrap'>{summary}</pre>"
        "</body></html>"
    )


# ---------------------------------------------------------------------------- CLI
def parse_knobs(specs: list[str]) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip():
            raise ValueError(f"bad --knob {spec!r}: expected NAME=VALUE")
        if name == "run":
            raise ValueError("--knob run=...: the prediction switches KSM on itself")
        v = value.strip()
        out[name] = int(v) if v.lstrip("-").isdigit() else v
    return out


def register(subparsers: Any) -> None:
    pp = subparsers.add_parser(
        "predict",
        help="predict what KSM will do to a capture over time",
        description="Rebuild a ksm-capture/1 file in the simulator, switch KSM on with the "
        "knobs, run ksmd for --duration simulated seconds (the time model of "
        "docs/cpu-model.md, the captured write rates replayed) and print the savings, the "
        "time to 50%% and 90%% of them, ksmd's CPU share and the memory KSM costs.",
    )
    pp.add_argument("capture", type=Path, help="a capture file (ksmlab capture -o FILE)")
    pp.add_argument("--kernel", default="6.18", help=f"kernel profile ({', '.join(KERNELS)})")
    pp.add_argument(
        "--knob", action="append", default=[], metavar="K=V", help="a sysfs knob (repeatable)"
    )
    pp.add_argument("--duration", type=float, default=120.0, help="simulated seconds (120)")
    pp.add_argument("--sample", type=float, default=1.0, help="seconds between samples (1)")
    pp.add_argument(
        "--merge",
        choices=MERGE_MODES,
        default="captured",
        help="which mappings are mergeable: as captured (default), all, or prctl (every "
        "process PR_SET_MEMORY_MERGE)",
    )
    pp.add_argument("--costs", metavar="FIRST,LATER,SKIP", help="CPU per page in us (0.9,3.5,0.1)")
    pp.add_argument("--seed", type=int, default=0, help="seed of the write schedule (0)")
    pp.add_argument(
        "--ksmd-cpu-s",
        type=float,
        default=0.0,
        help="ksmd's CPU time so far on the host, in seconds (the 'ksmd' line of `ps -o "
        "time`): with advisor_mode=scan-time the kernel's first advisor step counts it (0)",
    )
    pp.add_argument("--csv", type=Path, help="write the per-second samples as CSV")
    pp.add_argument("--html", type=Path, help="write the savings curve as an offline HTML page")
    pp.add_argument("--json", action="store_true", help="print the summary as JSON")
    pp.set_defaults(func=cmd_predict)


def parse_costs(text: str | None) -> CpuCosts:
    if text is None:
        return CpuCosts()
    try:
        a, b, c = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"bad --costs {text!r}: expected FIRST,LATER,SKIP in us") from None
    if min(a, b, c) < 0:
        raise ValueError("--costs must be >= 0")
    return CpuCosts.from_us(a, b, c)


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    try:
        knobs = parse_knobs(args.knob)
        costs = parse_costs(args.costs)
        cap = load_capture(args.capture)
        pred = predict(
            cap,
            args.kernel,
            knobs,
            duration_s=args.duration,
            costs=costs,
            sample_s=args.sample,
            merge=args.merge,
            seed=args.seed,
            cpu_base_ns=round(args.ksmd_cpu_s * 1e9),
        )
    except KnobError as exc:
        sys.stderr.write(f"ksmlab predict: --knob {exc.knob}: {exc.errno}: {exc.reason}\n")
        return 2
    except (CaptureError, SimError, ValueError) as exc:
        sys.stderr.write(f"ksmlab predict: {exc}\n")
        return 2
    if args.csv:
        args.csv.write_text(pred.csv())
    if args.html:
        args.html.write_text(prediction_html(pred, title=str(args.capture.name)))
    if args.json:
        sys.stdout.write(json.dumps(pred.summary(), indent=1) + "\n")
    else:
        sys.stdout.write(pred.summary_text() + "\n")
    return 0
