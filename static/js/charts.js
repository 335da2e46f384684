// Counter charts: plotly, streamed with extendTraces, with markers where events such as
// MADV_UNMERGEABLE or run=2 happened. A pure renderer: it plots the counters it is given.
// Points are buffered and flushed at most every FLUSH_MS so plotly never slows the grid.
// The global figure plots the levels of the KSM-files table each snapshot carries
// (`ksm_files`, sim/ksm_files.py): the page counters on the left axis, the byte counters
// (general_profit) in KiB on the right; running totals (full_scans...) are left out.

const COLOURS = {
  pages_shared: "#2ec260",
  pages_sharing: "#7ee2a0",
  pages_unshared: "#388bfd",
  pages_volatile: "#e6a817",
  ksm_zero_pages: "#ff20c8",
  general_profit: "#e6edf3",
};
const OTHER_COLOUR = "#8b949e";
const PROC_COLOURS = ["#ffd400", "#58d5ff", "#ff8a5c", "#b69cff", "#9be564", "#ff6fa8"];
const FLUSH_MS = 250;
// A plotly redraw is one long task (tens of ms for a figure); the interval between two
// flushes grows with it so charts never take more than about 1/BUDGET of the main thread.
const BUDGET = 40;
const MAX_INTERVAL = 4000;
const MAX_POINTS = 5000;

/** A round axis top above v (1, 2 or 5 times a power of ten, with some headroom). */
export function roundTop(v) {
  if (!(v > 0)) return 1;
  const x = v * 1.05;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

/** Side by side: the charts of every pane use the same y ranges (the largest value of all). */
export function shareAxes(list) {
  const charts = list.filter(Boolean);
  if (charts.length < 2) return;
  for (const c of charts) c.peers = charts;
}

function layout(title, ytitle, y2title, big) {
  const f = big ? 20 : 14;
  const l = {
    title: { text: title, font: { size: f + 2, color: "#e6edf3" }, x: 0.01 },
    paper_bgcolor: "#0f131a",
    plot_bgcolor: "#0f131a",
    font: { color: "#c9d1d9", size: f, family: "system-ui, sans-serif" },
    margin: { l: 60, r: y2title ? 70 : 20, t: 40, b: 28 },
    xaxis: { gridcolor: "#273040", zerolinecolor: "#3b4556" },
    yaxis: { title: { text: ytitle }, gridcolor: "#273040", zerolinecolor: "#3b4556", rangemode: "tozero" },
    shapes: [],
    annotations: [],
    showlegend: false, // an HTML legend (see legendOf): plotly's costs most of a redraw
  };
  // fixed ranges (shared axes) can give ticks such as 1,249.95: show them rounded
  if (ytitle === "KiB") l.yaxis.tickformat = ",.4~r";
  if (y2title) l.yaxis2 = { title: { text: y2title }, overlaying: "y", side: "right", showgrid: false, tickformat: ",.4~r",
    // its own round ticks from zero (plotly's default for an overlaying axis, "sync", puts
    // them on the left axis's grid lines: 100.4, 242 KiB and a negative bottom)
    tickmode: "auto", rangemode: "tozero" };
  return l;
}

/** The x axis title of a figure, by mode ("step" or "time"). */
function xTitle(l, mode) {
  l.xaxis.title = { text: mode === "time" ? "simulated time (s)" : "step" };
  l.margin.b = 44;
  return l;
}

/** A static HTML legend beside a figure: [[name, colour, dashed]]. */
function legendOf(el) {
  let box = el.nextElementSibling;
  if (!box || !box.classList.contains("chart-legend")) {
    box = document.createElement("div");
    box.className = "chart-legend";
    el.insertAdjacentElement("afterend", box);
  }
  return {
    set(items) {
      box.replaceChildren(...items.map(([name, colour, dashed]) => {
        const span = document.createElement("span");
        const sw = document.createElement("i");
        sw.style.borderTop = `${name === "ksm_zero_pages" ? 5 : 3}px ${dashed ? "dotted" : "solid"} ${colour}`;
        span.append(sw, name);
        return span;
      }));
    },
  };
}

export class Charts {
  constructor(globalEl, procEl, opts = {}) {
    this.Plotly = window.Plotly;
    this.globalEl = globalEl;
    this.procEl = procEl;
    this.big = !!opts.big;
    this.pending = null;
    this.procIndex = new Map();
    this.lastFlush = 0;
    this.lastPush = 0;
    this.points = 0;
    this.markers = [];
    this.pages = []; // counters on the pages axis
    this.bytes = []; // counters on the KiB axis
    this.peers = null; // side by side: the charts whose y axes this one shares (shareAxes)
    this.tap = null; // {push(x, global), reset()}: a figure fed from this one (Overlay)
    this.xmode = "step"; // or "time": simulated seconds (SessionView sets xOf)
    this.xOf = (step) => step;
    // a figure nobody can see is not redrawn (points wait until it scrolls into view)
    this.visible = true;
    if (window.IntersectionObserver) {
      new IntersectionObserver((entries) => {
        for (const e of entries) this.visible = e.isIntersecting;
      }, { threshold: 0.2 }).observe(globalEl);
    }
    this.reset();
  }

  /** Which counters to plot, from a snapshot's `ksm_files`; resets the figures if they change. */
  setFiles(files) {
    const levels = files.filter((f) => f.place === "sysfs" && f.role === "counter" && !f.cumulative);
    const pages = levels.filter((f) => f.unit === "pages").map((f) => f.name);
    const bytes = levels.filter((f) => f.unit === "bytes").map((f) => f.name);
    if (pages.join() === this.pages.join() && bytes.join() === this.bytes.join()) return;
    this.pages = pages;
    this.bytes = bytes;
    this.reset();
  }

  reset() {
    const P = this.Plotly;
    if (!P) return;
    const colour = (n) => COLOURS[n] ?? OTHER_COLOUR;
    const traces = this.pages.map((name) => ({
      x: [], y: [], name, mode: "lines", line: { color: colour(name), width: name === "ksm_zero_pages" ? 4 : 2.5 },
    }));
    for (const name of this.bytes) {
      traces.push({ x: [], y: [], name: `${name} (KiB)`, yaxis: "y2", mode: "lines", line: { color: colour(name), width: 2, dash: "dot" } });
    }
    const config = { displayModeBar: false, responsive: true, staticPlot: false };
    const gl = layout("global counters", "pages", this.bytes.length ? "KiB" : null, this.big);
    xTitle(gl, this.xmode);
    P.newPlot(this.globalEl, traces, gl, config);
    legendOf(this.globalEl).set([
      ...this.pages.map((n) => [n, colour(n), false]),
      ...this.bytes.map((n) => [`${n} (KiB, right axis)`, colour(n), true]),
    ]);
    if (this.procEl) {
      const pl = layout("ksm_process_profit per process", "KiB", null, this.big);
      xTitle(pl, this.xmode);
      P.newPlot(this.procEl, [], pl, config);
      legendOf(this.procEl).set([]);
    }
    this.procIndex.clear();
    this.markers = [];
    this.points = 0;
    this.ymax = { pages: 0, kib: 0, procs: 0 };
    this.applied = "";
    this.tap?.reset();
    this.pending = { x: [], g: this.pages.map(() => []), kib: this.bytes.map(() => []), procs: new Map() };
    this._publish();
  }

  /** The x axis: "step" or "time" (the caller replays the history, see SessionView). */
  setXMode(mode) {
    this.xmode = mode;
    this.globalEl.dataset.xmode = mode;
    this.reset();
  }

  setBig(big) {
    this.big = big;
    const f = big ? 20 : 14;
    for (const el of [this.globalEl, this.procEl]) {
      if (el) this.Plotly?.relayout(el, { "font.size": f, "title.font.size": f + 2, "legend.font.size": f - 1 });
    }
  }

  /** One step's counters: global = {pages_shared: ...}, procs = {A: {ksm_process_profit: ...}} */
  push(step, global, procs) {
    if (!this.pending) return;
    const p = this.pending;
    this.lastPush = performance.now();
    const x = this.xOf(step);
    p.x.push(x);
    const y = this.ymax;
    this.pages.forEach((name, i) => {
      const v = global?.[name] ?? null;
      p.g[i].push(v);
      if (v !== null && v > y.pages) y.pages = v;
    });
    this.bytes.forEach((name, i) => {
      const v = global?.[name];
      const kib = v === null || v === undefined ? null : v / 1024;
      p.kib[i].push(kib);
      if (kib !== null && kib > y.kib) y.kib = kib;
    });
    this.tap?.push(x, global);
    for (const [name, stat] of Object.entries(procs || {})) {
      if (!p.procs.has(name)) p.procs.set(name, { x: [], y: [] });
      const v = stat?.ksm_process_profit;
      const q = p.procs.get(name);
      q.x.push(x);
      const kib = v === null || v === undefined ? null : v / 1024;
      q.y.push(kib);
      if (kib !== null && kib > y.procs) y.procs = kib;
    }
  }

  /** Side by side: the y ranges both figures of every peer use (0 to a round top). */
  _sharedRanges() {
    const top = { pages: 0, kib: 0, procs: 0 };
    for (const c of this.peers) for (const k in top) top[k] = Math.max(top[k], c.ymax[k]);
    for (const k in top) top[k] = roundTop(top[k]);
    return top;
  }

  _applyRanges() {
    const top = this._sharedRanges();
    const key = `${top.pages},${top.kib},${top.procs}`;
    if (key === this.applied) return;
    this.applied = key;
    const P = this.Plotly;
    const g = { "yaxis.range": [0, top.pages], "yaxis.autorange": false };
    if (this.bytes.length) Object.assign(g, { "yaxis2.range": [0, top.kib], "yaxis2.autorange": false });
    P.relayout(this.globalEl, g);
    if (this.procEl) P.relayout(this.procEl, { "yaxis.range": [0, top.procs], "yaxis.autorange": false });
    this.globalEl.dataset.yrange = key;
  }

  /** An event worth a marker (MADV_UNMERGEABLE, run=2, fork, exit...) at this step. */
  mark(step, text) {
    const same = this.markers.find((m) => m.step === step);
    if (same) {
      if (text.length <= same.text.length) return;
      same.text = text; // the op that caused it names it better than "unmerge"
    } else this.markers.push({ step, text });
    this._markersDirty = true;
  }

  /**
   * Flush buffered points; call from the animation loop. The two figures take turns (one
   * plotly redraw per call), so one call never blocks the page for two redraws.
   */
  flush(now = performance.now(), force = false) {
    const P = this.Plotly;
    const p = this.pending;
    if (!P || !p || (!force && !this.visible)) return;
    const procsDue = this.procEl && p.procs.size > 0;
    const rangesDue = this.peers && this._rangeKey() !== this.applied;
    if (!p.x.length && !procsDue && !this._markersDirty && !rangesDue) return;
    // while points stream in, wait the budgeted interval; once they stop, draw at once
    const interval = Math.min(MAX_INTERVAL, Math.max(FLUSH_MS, BUDGET * (this.cost || 0)));
    const streaming = now - this.lastPush < 300;
    if (!force && streaming && now - this.lastFlush < interval) return;
    this.lastFlush = now;
    const t0 = performance.now();
    const procTurn = procsDue && (this._turn = !this._turn);
    if (force || !procTurn) {
      const n = this.pages.length + this.bytes.length;
      if (p.x.length && n) {
        P.extendTraces(
          this.globalEl,
          { x: Array.from({ length: n }, () => p.x), y: [...p.g, ...p.kib] },
          Array.from({ length: n }, (_, i) => i),
          MAX_POINTS,
        );
        this.points += p.x.length;
      }
      if (this._markersDirty) this._drawMarkers();
      p.x = []; p.g = this.pages.map(() => []); p.kib = this.bytes.map(() => []);
    }
    if (this.procEl && (force || procTurn)) {
      this._flushProcs(p.procs);
      p.procs = new Map();
    }
    if (this.peers) this._applyRanges();
    this._publish();
    const took = performance.now() - t0;
    if (!force) this.cost = this.cost ? 0.7 * this.cost + 0.3 * took : took;
  }

  _flushProcs(procs) {
    const P = this.Plotly;
    for (const [name, q] of procs) {
      if (!this.procIndex.has(name)) {
        const i = this.procIndex.size;
        this.procIndex.set(name, i);
        P.addTraces(this.procEl, { x: [], y: [], name, mode: "lines", line: { color: PROC_COLOURS[i % PROC_COLOURS.length], width: 3 } });
        legendOf(this.procEl).set([...this.procIndex.keys()].map((n, j) => [n, PROC_COLOURS[j % PROC_COLOURS.length], false]));
      }
    }
    const names = [...procs.keys()];
    if (!names.length) return;
    P.extendTraces(
      this.procEl,
      { x: names.map((n) => procs.get(n).x), y: names.map((n) => procs.get(n).y) },
      names.map((n) => this.procIndex.get(n)),
      MAX_POINTS,
    );
  }

  _drawMarkers() {
    this._markersDirty = false;
    const shapes = this.markers.map((m) => ({
      type: "line", x0: this.xOf(m.step), x1: this.xOf(m.step), yref: "paper", y0: 0, y1: 1,
      line: { color: "#ff4040", width: 2, dash: "dash" },
    }));
    const annotations = this.markers.map((m, i) => ({
      x: this.xOf(m.step), yref: "paper", y: 1 - (i % 3) * 0.09, text: m.text, showarrow: false,
      xanchor: "left", font: { color: "#ff8080", size: this.big ? 16 : 12 }, bgcolor: "#0f131a",
    }));
    this.Plotly.relayout(this.globalEl, { shapes, annotations });
    if (this.procEl) this.Plotly.relayout(this.procEl, { shapes });
  }

  _rangeKey() {
    const top = this._sharedRanges();
    return `${top.pages},${top.kib},${top.procs}`;
  }

  _publish() {
    this.globalEl.dataset.points = String(this.points);
    this.globalEl.dataset.markers = String(this.markers.length);
  }
}

// The key counters of both kernels in one figure (side by side): solid for the first
// kernel, dotted for the second, each against its own step number (the panes are in
// lockstep by scenario step, so their step numbers may differ by a few ksmd batches).
const OVERLAY_KEYS = ["pages_sharing", "pages_shared", "ksm_zero_pages"];
const DASHES = ["solid", "dot"];

export class Overlay {
  constructor(el, kernels, opts = {}) {
    this.Plotly = window.Plotly;
    this.el = el;
    this.kernels = kernels;
    this.big = !!opts.big;
    this.lastFlush = 0;
    this.points = 0;
    this.xmode = "step";
    this.reset();
  }

  setXMode(mode) {
    this.xmode = mode;
    this.reset();
  }

  _index(i, k) { return k * this.kernels.length + i; }

  reset() {
    const P = this.Plotly;
    if (!P) return;
    const traces = [];
    OVERLAY_KEYS.forEach((name) => this.kernels.forEach((kv, i) => traces.push({
      x: [], y: [], name: `${name} ${kv}`, mode: "lines",
      line: { color: COLOURS[name], width: name === "ksm_zero_pages" ? 4 : 2.5, dash: DASHES[i % 2] },
    })));
    const l = layout(`${this.kernels.join(" vs ")}: key counters`, "pages", null, this.big);
    l.xaxis.title = { text: this.xmode === "time" ? "simulated time (s), each kernel's own" : "step (each kernel's own)" };
    l.margin.b = 44;
    P.newPlot(this.el, traces, l, { displayModeBar: false, responsive: true });
    legendOf(this.el).set(OVERLAY_KEYS.flatMap((name) => this.kernels.map((kv, i) => [`${name} ${kv}`, COLOURS[name], i % 2 === 1])));
    this.pending = this.kernels.map(() => ({ x: [], y: OVERLAY_KEYS.map(() => []) }));
    this.el.dataset.points = "0";
  }

  /** Kernel ``i``'s figure was reset (a jump): its traces start again. */
  clear(i) {
    const P = this.Plotly;
    if (!P || !this.pending) return;
    const idx = OVERLAY_KEYS.map((_, k) => this._index(i, k));
    P.restyle(this.el, { x: idx.map(() => []), y: idx.map(() => []) }, idx);
    this.pending[i] = { x: [], y: OVERLAY_KEYS.map(() => []) };
  }

  push(i, x, global) {
    const p = this.pending?.[i];
    if (!p) return;
    p.x.push(x);
    OVERLAY_KEYS.forEach((name, k) => p.y[k].push(global?.[name] ?? null));
  }

  /** The taps to set on each pane's Charts (``charts.tap``). */
  tapOf(i) {
    return { push: (x, g) => this.push(i, x, g), reset: () => this.clear(i) };
  }

  flush(now = performance.now(), force = false) {
    const P = this.Plotly;
    if (!P || !this.pending || !this.pending.some((p) => p.x.length)) return;
    if (!force && now - this.lastFlush < FLUSH_MS * 2) return;
    this.lastFlush = now;
    const xs = [], ys = [], idx = [];
    this.pending.forEach((p, i) => {
      if (!p.x.length) return;
      OVERLAY_KEYS.forEach((_, k) => { xs.push(p.x); ys.push(p.y[k]); idx.push(this._index(i, k)); });
      this.points += p.x.length;
      this.pending[i] = { x: [], y: OVERLAY_KEYS.map(() => []) };
    });
    P.extendTraces(this.el, { x: xs, y: ys }, idx, MAX_POINTS);
    this.el.dataset.points = String(this.points);
  }
}
