// One session on screen: its grid, charts and counters panel, fed by main.js with the
// messages of its websocket (docs/protocol.md). The state it keeps is what it was sent,
// never computed.

import { Charts } from "./charts.js";
import { Counters } from "./counters.js";
import { bytes, duration, share } from "./format.js";
import { PageGrid } from "./page_grid.js";
import { b64bytes, b64int32, forEachPage, frameRecords } from "./protocol.js";

/** The flash of a page whose kind changed in a step (events of the step break ties). */
function flashClass(K, old, kind, counts) {
  const MERGED = K.merged;
  if (kind === K.ksm && old !== K.ksm) return "merge";
  if (kind === K.ksm_zero && old !== K.ksm_zero) return "zero_merge";
  // a THP split (6.12+) mapped a zero-filled page to the zero page, outside KSM's counters
  if (kind === K.zero && old !== K.zero && old !== K.none && counts.thp_zero) return "thp_zero";
  if (kind === K.zero && old !== K.zero && old !== K.none && counts.zero_merge) return "zero_merge";
  const wasShared = MERGED.has(old) || (old === K.zero && kind !== K.none);
  if (wasShared && !MERGED.has(kind) && kind !== K.none) {
    const cow = (counts.cow || 0) + (counts.cow_zero || 0);
    const unshare = (counts.unshare || 0) + (counts.unshare_zero || 0) + (counts.unmerge_all || 0);
    return cow > unshare ? "cow" : "unshare";
  }
  return null;
}

/** Page ranges [[start, stop)] as a scenario writes them: "0-99,200". */
function rangesText(pages) {
  return pages.map(([a, b]) => (b - a === 1 ? `${a}` : `${a}-${b - 1}`)).join(",");
}

// ops a talk points at (madvise only with MADV_UNMERGEABLE, sysfs only with run=2)
const MARKED_OPS = new Set(["madvise", "prctl", "fork", "exit", "munmap"]);

/** The marker of an op or knob write of the step's description (`what`), or null. */
function opMarker(w) {
  const knob = w.kind === "knob" || (w.kind === "op" && w.op === "sysfs");
  if (knob) return w.knob === "run" && String(w.value) === "2" ? "sysfs run=2" : null;
  if (w.kind !== "op" || !MARKED_OPS.has(w.op)) return null;
  if (w.op === "madvise" && w.advice !== "MADV_UNMERGEABLE") return null;
  const where = [w.proc, w.vma].filter((x) => x != null).join(" ");
  const pages = Array.isArray(w.pages) && w.pages.length ? `[${rangesText(w.pages)}]` : "";
  return [w.op, where + pages, w.child, w.advice, w.value].filter((x) => x != null && x !== "").join(" ");
}

/** Chart markers: the step's ops and events that a talk points at (from `what`, never the summary). */
function markerOf(msg) {
  const w = msg.what || {};
  const c = w.counts || {};
  const op = opMarker(w);
  if (op) return op.slice(0, 40);
  if (c.unmerge_all) return "run=2";
  if (c.unshare || c.unshare_zero) return "unmerge";
  return null;
}

/** Kind numbers by name, from a snapshot's `kinds`. */
function kindIndex(kinds) {
  const K = Object.fromEntries(kinds.map((n, i) => [n, i]));
  K.merged = new Set([K.ksm, K.ksm_zero]);
  return K;
}

/** counters.csv: step, global counters, then <proc>.<ksm_stat field> columns. */
function parseCsv(text) {
  const lines = text.trim().split(/\r?\n/);
  if (lines.length < 2) return [];
  const head = lines[0].split(",");
  return lines.slice(1).map((line) => {
    const cells = line.split(",");
    const row = { step: Number(cells[0]), global: {}, procs: {} };
    head.forEach((h, i) => {
      if (i === 0) return;
      const v = cells[i] === "" || cells[i] === undefined ? null : Number(cells[i]);
      const dot = h.lastIndexOf(".");
      if (dot < 0) row.global[h] = v;
      else {
        const p = h.slice(0, dot);
        (row.procs[p] ||= {})[h.slice(dot + 1)] = v;
      }
    });
    return row;
  });
}

export class SessionView {
  constructor(root, opts = {}) {
    this.root = root;
    this.id = root.dataset.session;
    this.kernel = root.dataset.kernel;
    this.opts = opts;
    this.grid = new PageGrid(root.querySelector("canvas.page-grid"), { gutter: opts.big ? 190 : 150 });
    this.grid.onViewport = (vp) => this.send(vp); // a large session: what the grid shows
    const g = root.querySelector(".chart-global"), p = root.querySelector(".chart-procs");
    this.charts = g && window.Plotly ? new Charts(g, p, { big: opts.big }) : null;
    this.counters = new Counters(root.querySelector(".counters"));
    this.summaryEl = root.querySelector(".what-happened");
    this.wordsEl = root.querySelector(".what-happened .words");
    this.chainEl = root.querySelector(".what-happened .call-chain");
    this.money = {
      cpu: root.querySelector(".m-cpu"), time: root.querySelector(".m-time"), saved: root.querySelector(".m-saved"),
    };
    // the time account of each step (story.time_ns), for the simulated-time axis
    this.times = new Map();
    this.xmode = "step";
    if (this.charts) this.charts.xOf = (s) => (this.xmode === "time" ? (this.times.get(s) ?? NaN) / 1e9 : s);
    this.stepEl = root.querySelector(".step-no");
    this.storyEl = root.querySelector(".story-pos");
    this.step = 0;
    this.head = 0;
    this.playing = false;
    this.procNames = [];
    this.lastAck = -1;
    this.retry = 0;
    this.listeners = [];
  }

  onStep(fn) { this.listeners.push(fn); }

  /** ``fn(msg)`` for each next message until it returns true (``end`` included). */
  onceMessage(fn) { (this.waiters ||= []).push(fn); }

  _wake(msg) {
    if (this.waiters?.length) this.waiters = this.waiters.filter((fn) => !fn(msg));
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  applySnapshot(msg) {
    const table = msg.kind_table;
    if (table.pages.map((k) => k.name).join() !== msg.kinds.join()) throw new Error(`unexpected kinds ${msg.kinds}`);
    this.K = kindIndex(msg.kinds);
    this.kindTable = table;
    this.grid.setKinds(table);
    this.counters.setFiles(msg.ksm_files);
    if (this.charts) this.charts.setFiles(msg.ksm_files);
    if (msg.overview) this.grid.setOverview(msg); // a large session (overview.js)
    else {
      const lanes = [];
      for (const proc of msg.procs) {
        for (const v of proc.vmas) {
          lanes.push({ proc: proc.name, vma: v.name, uid: v.uid, npages: v.npages, kinds: b64bytes(v.kind), pfns: b64int32(v.pfn) });
        }
      }
      const frames = msg.frames ? { count: msg.frames.count, kind: b64bytes(msg.frames.kind), mapcount: b64int32(msg.frames.mapcount) } : null;
      this.grid.setLayout(lanes, frames);
    }
    this.grid.setCursor(msg.ksmd?.cursor);
    this.global = { ...msg.global };
    this.procStats = Object.fromEntries(msg.procs.map((p) => [p.name, { ...p.ksm_stat }]));
    this.knobs = { ...msg.knobs };
    const names = msg.procs.map((p) => p.name);
    if (this.charts && this.procNames.length && names.join() !== this.procNames.join()) {
      const added = names.filter((n) => !this.procNames.includes(n));
      const gone = this.procNames.filter((n) => !names.includes(n));
      if (added.length) this.charts.mark(msg.step, `+${added.join(",")}`);
      if (gone.length) this.charts.mark(msg.step, `exit ${gone.join(",")}`);
    }
    // a snapshot of the same step (a large session's new viewport) keeps the charts
    const jump = this.seen === undefined || (msg.step !== this.step + 1 && msg.step !== this.step);
    this.procNames = names;
    this.seen = true;
    this.marks = msg.marks || [];
    this.chapters = msg.chapters || [];
    this._afterStep(msg);
    if (jump && this.charts) this._reloadCharts(msg.step);
  }

  /** The markers of the recorded steps up to `step` (the snapshot's `marks`, from `what`). */
  _restoreMarks(step) {
    for (const m of this.marks || []) {
      if (m.step > step) break;
      const text = markerOf({ what: m.what });
      if (text) this.charts.mark(m.step, text);
    }
  }

  applyDelta(msg) {
    const counts = msg.event_counts || {};
    const grid = this.grid;
    // frames first, so a page that now maps a KSM page is shaded by its new map count
    if (msg.frames && msg.frames.n) {
      for (const [pfn, kind, mapcount] of frameRecords(msg.frames.d, msg.frames.n)) grid.setFrame(pfn, kind, mapcount);
    }
    for (const pg of msg.pages || []) {
      const lane = grid.lane(pg.uid);
      if (!lane) continue;
      forEachPage(pg.d, pg.n, (i, pfn, pte, item, kind) => {
        const old = grid.setPage(lane, i, kind, pfn);
        if (old !== kind) {
          const f = flashClass(this.K, old, kind, counts);
          if (f) grid.flash(lane, i, f);
        }
      });
    }
    if (msg.overview) grid.applyOverview(msg.overview);
    grid.commit();
    if (msg.ksmd) grid.setCursor(msg.ksmd.cursor);
    Object.assign(this.global, msg.global || {});
    for (const [p, stat] of Object.entries(msg.ksm_stat || {})) this.procStats[p] = { ...(this.procStats[p] || {}), ...stat };
    Object.assign(this.knobs, msg.knobs || {});
    this._afterStep(msg);
  }

  _afterStep(msg) {
    this.step = msg.step;
    this.head = msg.head;
    if (this.summaryEl) {
      const w = msg.what || {};
      // plain words first, the kernel's call chain below (sim/snapshot.py step_words)
      if (this.wordsEl) {
        this.wordsEl.textContent = w.words || msg.summary || "";
        this.wordsEl.title = msg.summary || "";
        this.chainEl.textContent = w.chain || "";
      } else this.summaryEl.textContent = msg.summary || "";
      this.summaryEl.dataset.step = String(msg.step);
    }
    if (this.stepEl) this.stepEl.textContent = String(msg.step);
    this.story = msg.story || this.story;
    if (this.storyEl && this.story) this.storyEl.textContent = `scenario step ${this.story.pos} / ${this.story.steps}`;
    if (msg.story && msg.story.time_ns != null) this.times.set(msg.step, msg.story.time_ns);
    this._showMoney();
    this.root.dataset.step = String(msg.step);
    this.root.dataset.head = String(msg.head);
    this.counters.update(this.global, this.procStats, this.kernel);
    if (this.chartBuffer) this.chartBuffer.push([msg.step, { ...this.global }, structuredClone(this.procStats)]);
    else if (this.charts) {
      this.charts.push(msg.step, this.global, this.procStats);
      const m = markerOf(msg);
      if (m) this.charts.mark(msg.step, m);
    }
    for (const fn of this.listeners) fn(this, msg);
    this._wake(msg);
    this.pendingAck = msg.step;
  }

  /** "ksmd CPU so far", simulated time and memory saved, from the step's `story`. */
  _showMoney() {
    const s = this.story, m = this.money;
    if (!s || s.time_ns == null || !m.cpu) return;
    const pct = share(s.cpu_ns, s.time_ns);
    m.cpu.textContent = `${duration(s.cpu_ns)}${pct ? ` (${pct})` : ""}`;
    m.cpu.dataset.ns = String(s.cpu_ns);
    m.cpu.title = `${s.cpu_ns.toLocaleString("en-US")} ns of modelled ksmd CPU in ${s.batches.toLocaleString("en-US")} batches${pct ? `: ${pct} of the simulated time` : ""}`;
    m.time.textContent = duration(s.time_ns);
    m.time.dataset.ns = String(s.time_ns);
    m.time.title = `${s.time_ns.toLocaleString("en-US")} ns: every batch's CPU plus sleep_millisecs`;
    m.saved.textContent = bytes(s.saved_bytes);
    m.saved.dataset.bytes = String(s.saved_bytes);
    m.saved.title = this.global?.general_profit != null
      ? `general_profit: ${s.saved_bytes.toLocaleString("en-US")} bytes = (pages_sharing + ksm_zero_pages) × 4 KiB − rmap_items × 64 B`
      : `${s.saved_bytes.toLocaleString("en-US")} bytes = pages_sharing × 4 KiB − rmap_items × 64 B (this kernel has no general_profit)`;
  }

  /** The charts' x axis: "step" or "time" (simulated seconds); redraws the history. */
  setXMode(mode) {
    if (mode === this.xmode) return;
    this.xmode = mode;
    if (!this.charts) return;
    this.charts.setXMode(mode);
    if (this.seen) this._reloadCharts(this.step);
  }

  applyState(msg) {
    this.playing = !!msg.playing;
    this.root.dataset.playing = String(this.playing);
    for (const fn of this.listeners) fn(this, msg);
    document.body.dispatchEvent(new CustomEvent("ksm:state", { detail: { session: this.id, ...msg } }));
  }

  applyEnd(msg) {
    this._wake(msg);
    this.playing = false;
    this.root.dataset.playing = "false";
    this.root.dataset.end = msg.reason || "end";
    if (msg.reason === "deleted" || msg.reason === "expired") {
      this._isGone();
    } else {
      this._status("at the end: inject an op or write run=1 to go on");
    }
    document.body.dispatchEvent(new CustomEvent("ksm:state", { detail: { session: this.id, playing: false } }));
  }

  showError(msg) {
    const el = this.root.querySelector(".ws-error") || document.querySelector(".ws-error");
    if (el) {
      el.textContent = msg.knob ? `${msg.knob}: ${msg.errno || ""} ${msg.message}` : msg.message;
      el.hidden = false;
      clearTimeout(this._errTimer);
      this._errTimer = setTimeout(() => { el.hidden = true; }, 6000);
    }
  }

  /** After a jump (connect, back, seek, reset): the history from counters.csv. */
  async _reloadCharts(step) {
    // a newer jump (fast ← presses) supersedes this one: only the last reload draws
    const seq = (this.reloadSeq = (this.reloadSeq || 0) + 1);
    if (!this.chartBuffer) this.chartBuffer = [];
    let rows = [];
    const base = `/api/sessions/${encodeURIComponent(this.id)}`;
    try {
      const [r, t] = await Promise.all([fetch(`${base}/counters.csv`), fetch(`${base}/times`)]);
      if (r.ok) rows = parseCsv(await r.text());
      if (t.ok) {
        const times = await t.json();
        if (seq === this.reloadSeq) {
          const live = this.times;
          this.times = new Map(times.time_ns.map((ns, s) => [s, ns]));
          for (const [s, ns] of live) if (s > times.step) this.times.set(s, ns);
        }
      }
    } catch (e) { /* keep the live points only */ }
    if (seq !== this.reloadSeq) return;
    const buffered = this.chartBuffer || [];
    this.chartBuffer = null;
    step = this.step;
    this.charts.reset();
    this._restoreMarks(step);
    let last = -1;
    for (const row of rows) {
      if (row.step > step) break;
      this.charts.push(row.step, row.global, row.procs);
      last = row.step;
    }
    for (const [s, g, p] of buffered) if (s > last) this.charts.push(s, g, p);
    this.charts.flush(performance.now(), true);
  }

  /** After a lost connection: is the session still on the server (a restart drops it)? */
  async _isGone() {
    try {
      const r = await fetch(`/api/sessions/${encodeURIComponent(this.id)}`);
      if (r.status !== 404) return false;
    } catch (e) {
      return false; // the server is down: keep trying
    }
    this.gone = true;
    this.root.dataset.end = "gone";
    const u = new URL(location.href);
    for (const k of ["sid", "a", "b"]) u.searchParams.delete(k);
    const el = this.root.querySelector(".conn-status");
    if (el) {
      el.textContent = "this session is gone from the server: ";
      const a = document.createElement("a");
      a.href = u.toString();
      a.textContent = "rebuild it from the link";
      el.appendChild(a);
    }
    return true;
  }

  /** The connection is lost: nothing plays any more (the controls must not say ❚❚ Pause). */
  lostConnection() {
    if (!this.playing) return;
    this.playing = false;
    this.root.dataset.playing = "false";
    for (const b of document.querySelectorAll('#controls [data-action="toggle"]')) {
      b.textContent = "▶ Play";
      b.value = "play";
    }
  }

  _status(text) {
    const el = this.root.querySelector(".conn-status");
    if (el) el.textContent = text;
  }

  /** One animation frame: draw, flush charts, then tell the server what we drew. */
  frame(now) {
    const drew = this.grid.draw(now);
    if (this.charts) {
      const t0 = performance.now();
      this.charts.flush(now);
      const st = window.__ksm, took = performance.now() - t0;
      if (st) { st.chartMs = (st.chartMs || 0) + took; st.maxChartMs = Math.max(st.maxChartMs || 0, took); }
    }
    // `ack`: the last step drawn, shown as this viewer's `acked` in /viewers (its drawing lag)
    if (this.pendingAck !== undefined && this.pendingAck !== this.lastAck) {
      this.lastAck = this.pendingAck;
      this.send({ type: "ack", step: this.lastAck });
    }
    return drew;
  }
}
