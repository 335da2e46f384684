// The page grid: one cell per virtual page, one lane per process and VMA, on a canvas.
// A pure renderer: it draws the kinds it is given and computes no KSM state. The page and
// frame kinds (names and numbers) come with each snapshot (`kind_table`, sim/snapshot.py);
// palette.js gives each kind name its colour.
//
// Cells live in an offscreen image at one pixel per cell (ImageData, updated only where
// pages changed, putImageData of the dirty rectangle); each animation frame scales it onto
// the visible canvas with zoom and pan, then draws the flashes, ksmd's cursor and the
// selection. The physical view draws one cell per frame (pfn) with how many PTEs map it.

import { Layer, mix, pack } from "./cell_image.js";
import { beginFrame, drawCursor, drawSelection, gridLines, labels, laneGaps, mapCounts } from "./grid_overlay.js";
import { bindPointer } from "./grid_pointer.js";
import { Overview } from "./overview.js";
import { FLASH_COLOURS, KIND_COLOURS, ksmShade } from "./palette.js";

const COLS = [8, 10, 16, 20, 25, 32, 40, 50, 64, 80, 100, 128, 160, 200, 256, 320, 400, 512, 640, 800, 1024];
// A flash recolours the cells in the cell image itself (no extra layer to draw each frame):
// full flash colour, then half way back, then the cell's own colour again.
const FLASH_STAGES = [0, 260, 520]; // ms: flash colour, blend, restored
const MAX_FLASH_BATCHES = 8;
const KSM_REPAINT_MS = 1000;
const UNKNOWN = [255, 0, 0]; // a kind palette.js has no colour for
// set by PageGrid.setKinds from the snapshot's kind table
let KIND_NAMES = [];
let KIND_PACKED = [];
let NONE = -1, ANON = -1, KSM = -1, KSM_ZERO = -1;
let F_FREE = -1, F_KSM = -1, F_ZERO = -1;

const PHYS_ZERO = pack(KIND_COLOURS.zero);
const PHYS_COW = pack([150, 162, 178]); // anonymous page mapped by several PTEs (fork)
const PHYS_FREE = pack([40, 46, 56]);

export class PageGrid {
  constructor(canvas, opts = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { alpha: false });
    // the label gutter: at most maxGutter, as wide as the labels need (_layoutGutter)
    this.maxGutter = opts.gutter ?? 150;
    this.gutter = this.maxGutter;
    this.labelPx = 19;
    this.lanes = [];
    this.byKey = new Map();
    this.view = "virtual"; // or "physical"
    this.scale = 1; this.ox = 0; this.oy = 0;
    this.cursor = null;
    this.selection = null;
    this.flashes = []; // batches: {t, stage, lanes: [], pages: [], colours: []}
    this.batch = null;
    this.shades = new Uint32Array(4096); // packed KSM shade by map count
    this.counts = [];
    this.needs = true;
    this.fitted = false;
    bindPointer(this);
    this._resize();
    new ResizeObserver(() => { this._resize(); }).observe(canvas);
  }

  // ---------------------------------------------------------------- data
  /**
   * The page and frame kinds: a snapshot's `kind_table` ({pages: [{id, name, ...}], frames}),
   * before its first setLayout.
   */
  setKinds(table) {
    const names = table.pages.map((k) => k.name);
    if (names.join() === KIND_NAMES.join() && this.counts.length === names.length) return;
    const page = (n) => names.indexOf(n);
    const frame = (n) => table.frames.find((f) => f.name === n)?.id ?? -1;
    KIND_NAMES = names;
    KIND_PACKED = names.map((n) => pack(KIND_COLOURS[n] ?? UNKNOWN));
    [NONE, ANON, KSM, KSM_ZERO] = ["none", "anon", "ksm", "ksm_zero"].map(page);
    [F_FREE, F_KSM, F_ZERO] = ["free", "ksm", "zero"].map(frame);
    this.counts = new Array(names.length).fill(0);
  }

  /**
   * lanes: [{proc, vma, uid, npages, kinds: Uint8Array, pfns: Int32Array}];
   * frames: {count, kind: Uint8Array (frame kind ids), mapcount: Int32Array}
   */
  setLayout(lanes, frames) {
    this.ov = null;
    this.lanes = lanes.map((l) => ({ ...l, kinds: l.kinds ?? new Uint8Array(l.npages), pfns: l.pfns ?? null }));
    this.byKey.clear();
    for (const lane of this.lanes) {
      this.byKey.set(`${lane.proc}/${lane.vma}`, lane);
      if (lane.uid !== undefined && lane.uid !== null) this.byKey.set(lane.uid, lane);
    }
    const total = this.lanes.reduce((s, l) => s + l.npages, 0);
    this._layoutGutter();
    this._placeLanes(this._chooseCols(total));
    this.counts.fill(0);
    this.zeroPtes = 0;
    for (const lane of this.lanes) if (lane.pfns) for (let i = 0; i < lane.npages; i++) if (lane.pfns[i] === 0) this.zeroPtes++;
    this._setFrames(frames);
    this._version = (this._version || 0) + 1;
    for (const lane of this.lanes) {
      for (let i = 0; i < lane.npages; i++) {
        this.counts[lane.kinds[i]]++;
        this._paint(lane, i);
      }
    }
    this.virt.markAll();
    if (!this.fitted || this._lastTotal !== total) this.fit();
    this._lastTotal = total;
    this._laidOut = [this.cw, this.ch];
    this.needs = true;
    this._publish();
  }

  lane(key) { return this.ov ? this.ov.byUid.get(key) : this.byKey.get(key); }

  /**
   * A large session's snapshot (it carries `overview`, overview.js): the whole host as
   * buckets, per-page data only where the viewport asked for it.
   */
  setOverview(msg) {
    const names = KIND_NAMES;
    const same = this.ov && this.ov.lanes.length === msg.overview.lanes.length
      && this.ov.lanes.every((l, i) => l.uid === msg.overview.lanes[i].uid);
    if (same) this.ov.load(msg);
    else {
      this.ov = new Overview(this, msg, names, KIND_PACKED);
      this.lanes = [];
      this._layoutGutter();
      this.fit(); // and tell the server what the fitted grid shows
    }
    this.canvas.dataset.bucket = String(this.ov.bucket);
    this.canvas.dataset.overview = "1";
    this.canvas.tabIndex = 0;
    this._publish();
    this.needs = true;
  }

  /** A delta's `overview`: changed buckets. */
  applyOverview(od) {
    if (this.ov) this.ov.apply(od);
  }

  /** Zoom so that pages [lo, hi) of a mapping fill the screen (overview only). */
  zoomToPages(proc, vma, lo, hi) {
    if (!this.ov) return;
    const lane = this.ov.lanes.find((l) => l.proc === proc && l.vma === vma);
    if (lane) { this.ov.zoomTo(lane, lo, hi); this.viewportChanged(); }
  }

  /** After a zoom or pan: tell the server what we show (debounced; overview only). */
  viewportChanged() {
    if (!this.ov || !this.onViewport) return;
    clearTimeout(this._vpTimer);
    this._vpTimer = setTimeout(() => {
      const vp = this.ov.viewport();
      const key = JSON.stringify(vp);
      if (key === this.ov.sent) return;
      this.ov.sent = key;
      this.canvas.dataset.viewport = key;
      this.onViewport(vp);
    }, 150);
  }

  /** One page changed: its new kind and pfn. Returns its previous kind. */
  setPage(lane, i, kind, pfn) {
    if (this.ov) return this.ov.setPage(lane, i, kind, pfn);
    if (!lane || i < 0 || i >= lane.npages) return -1;
    const old = lane.kinds[i];
    this.counts[old]--; this.counts[kind]++;
    lane.kinds[i] = kind;
    if (lane.pfns && pfn !== undefined) {
      if (lane.pfns[i] === 0) this.zeroPtes--;
      if (pfn === 0) this.zeroPtes++;
      lane.pfns[i] = pfn;
    }
    this._paint(lane, i);
    this.needs = true;
    return old;
  }

  /** One frame changed (physical view, and the shade of the KSM cells mapping it). */
  setFrame(pfn, kind, mapcount) {
    if (this.ov) { this.ov.fmap.set(pfn, mapcount); return; }
    if (pfn >= this.fcap) this._growFrames(pfn + 1);
    if (pfn >= this.fcount) this.fcount = pfn + 1;
    const wasKsm = this.fkind[pfn] === 2;
    if (wasKsm || kind === 2) this._ksmRepaint = true;
    this.fkind[pfn] = kind;
    this.fmap[pfn] = mapcount;
    if (this.phys && pfn < this.phys.w * this.phys.h) this.phys.set(pfn, this._frameColour(pfn));
    else this._physDirty = true;
  }

  /** Called once after a batch of setPage / setFrame calls. */
  commit() {
    this.batch = null;
    if (this.ov) { this._publish(); this.needs = true; return; }
    this._version = (this._version || 0) + 1;
    if (this.phys && this.fcount > 0 && this.phys.px[0] !== this._frameColour(0)) this.phys.set(0, this._frameColour(0));
    const now = performance.now();
    if (this._ksmRepaint && now - (this._lastKsmRepaint || 0) >= KSM_REPAINT_MS) {
      this._lastKsmRepaint = now;
      this._repaintKsm();
    }
    if (this._physDirty) { this._buildPhysical(); this._physDirty = false; }
    this._publish();
    this.needs = true;
  }

  /** Flash a cell (merge, zero_merge, unshare, cow); one batch per step. */
  flash(lane, i, cls) {
    if (this.ov) return;
    const c = FLASH_COLOURS[cls];
    if (!c || !lane || i < 0 || i >= lane.npages) return;
    if (!this.batch) {
      this.batch = { t: performance.now(), stage: 0, lanes: [], pages: [], colours: [] };
      this.flashes.push(this.batch);
      if (this.flashes.length > MAX_FLASH_BATCHES) this._endFlash(this.flashes.shift());
    }
    this.batch.lanes.push(lane);
    this.batch.pages.push(i);
    this.batch.colours.push(c);
    this.virt.set(this._idx(lane, i), pack(c));
    this.needs = true;
  }

  _flashStages(now) {
    while (this.flashes.length && now - this.flashes[0].t >= FLASH_STAGES[2]) this._endFlash(this.flashes.shift());
    for (const b of this.flashes) {
      if (b.stage === 0 && now - b.t >= FLASH_STAGES[1]) {
        b.stage = 1;
        for (let j = 0; j < b.pages.length; j++) {
          const lane = b.lanes[j], i = b.pages[j], idx = this._idx(lane, i);
          this.virt.set(idx, mix(b.colours[j], this._cellColour(lane, i)));
        }
      }
    }
  }

  _endFlash(b) {
    for (let j = 0; j < b.pages.length; j++) this._paint(b.lanes[j], b.pages[j]);
    if (this.batch === b) this.batch = null;
  }

  setCursor(cursor) {
    const c = cursor && cursor.proc && cursor.vma ? cursor : null;
    const same = JSON.stringify(c) === JSON.stringify(this.cursor);
    this.cursor = c;
    if (!c) delete this.canvas.dataset.cursor;
    if (!same) this.needs = true;
  }

  /** Presenter mode: a wider label gutter and larger labels. */
  setBig(big) {
    this.maxGutter = big ? 190 : 150;
    this._layoutGutter();
    this.fit();
  }

  setView(view) {
    this.view = view;
    this.fit();
    this.canvas.dataset.view = view;
  }

  /** PTEs mapping a frame; for the zero page, the PTEs with pfn 0 that we were sent. */
  mapcount(pfn) {
    return pfn === 0 ? Math.max(this.fmap[0] || 0, this.zeroPtes || 0) : this.fmap[pfn];
  }

  kindCounts() {
    if (this.ov) return this.ov.kindCounts();
    const out = {};
    KIND_NAMES.forEach((n, k) => { out[n] = this.counts[k]; });
    return out;
  }

  _setFrames(frames) {
    const count = frames?.count ?? 0;
    this.fcap = 0;
    this.fcount = count;
    this._growFrames(Math.max(64, count));
    if (frames?.kind) this.fkind.set(frames.kind.subarray(0, count));
    if (frames?.mapcount) this.fmap.set(frames.mapcount.subarray(0, count));
    this._buildPhysical();
  }

  _growFrames(n) {
    const cap = Math.max(n, Math.ceil(this.fcap * 1.5));
    const k = new Uint8Array(cap), m = new Int32Array(cap);
    if (this.fkind) { k.set(this.fkind.subarray(0, this.fcap)); m.set(this.fmap.subarray(0, this.fcap)); }
    this.fkind = k; this.fmap = m; this.fcap = cap;
  }

  // ------------------------------------------------------------ geometry
  /**
   * The labels' type size and the gutter's width. The type follows the canvas (a narrow pane,
   * side by side at 1280 px, gets smaller labels: 19 px, 22 px in presenter mode, at most);
   * the gutter is as wide as the widest label needs, at most maxGutter (150, 190 in
   * presenter mode), so a narrow pane keeps its width for the cells. The overview (large
   * sessions) keeps the full gutter for its own labels.
   */
  _layoutGutter() {
    const top = this.maxGutter > 150 ? 22 : 19;
    const px = Math.max(12, Math.min(top, Math.round((this.cw || 800) / 24)));
    this.labelPx = px;
    if (this.ov || !this.lanes.length) { this.gutter = this.maxGutter; return; }
    const ctx = this.ctx;
    let w = 0;
    for (const lane of this.lanes) {
      ctx.font = `bold ${px}px system-ui, sans-serif`;
      const name = ctx.measureText(lane.proc).width;
      ctx.font = `${px - 3}px ui-monospace, "DejaVu Sans Mono", monospace`;
      w = Math.max(w, 16 + name + ctx.measureText(lane.vma).width, 10 + ctx.measureText(`${lane.npages} pages`).width);
    }
    this.gutter = Math.min(this.maxGutter, Math.max(48, Math.ceil(w) + 12));
  }

  _chooseCols(total) {
    const r = this.canvas.getBoundingClientRect();
    const w = Math.max(200, (r.width || 800) - this.gutter - 16);
    const h = Math.max(150, (r.height || 500) - 16);
    let best = COLS[0], bestScale = 0;
    for (const c of COLS) {
      let rows = 0;
      for (const l of this.lanes) rows += Math.ceil(l.npages / c) + 1;
      const s = Math.min(w / c, h / Math.max(1, rows - 1));
      if (s > bestScale * 1.0001) { best = c; bestScale = s; }
    }
    return total ? best : 16;
  }

  /** The lanes in rows of `cols` cells, a gap row between lanes, on a new cell image. */
  _placeLanes(cols) {
    this.cols = cols;
    let row = 0;
    for (const lane of this.lanes) {
      lane.row0 = row;
      lane.rows = Math.max(1, Math.ceil(lane.npages / this.cols));
      row += lane.rows + 1;
    }
    this.rows = Math.max(1, row - 1);
    this.virt = new Layer(this.cols, this.rows);
    this.flashes = [];
    this.batch = null;
  }

  /**
   * The canvas changed size (presenter mode fits it to the screen after the first layout,
   * a window resize): the columns that fill it best, the cells repainted when they change.
   */
  _reflow() {
    if (this.ov || !this.lanes.length || !this.virt) return;
    const [w, h] = this._laidOut || [0, 0];
    if (w === this.cw && h === this.ch) return;
    this._laidOut = [this.cw, this.ch];
    const cols = this._chooseCols(this.lanes.reduce((s, l) => s + l.npages, 0));
    if (cols === this.cols) return;
    this._placeLanes(cols);
    for (const lane of this.lanes) for (let i = 0; i < lane.npages; i++) this._paint(lane, i);
    this.virt.markAll();
    if (this.selection) this._select(this.selection.lane, this.selection.a, this.selection.b, true);
    this._version = (this._version || 0) + 1;
  }

  _idx(lane, i) {
    return lane.row0 * this.cols + i; // a lane's rows are contiguous and start at column 0
  }

  _layer() { return this.view === "virtual" ? this.virt : this.phys; }

  fit() {
    if (this.ov) { this.ov.fit(); this.viewportChanged(); return; }
    const layer = this._layer();
    if (!layer) return;
    const w = this.cw - this.gutter - 16, h = this.ch - 16;
    let s = Math.min(w / layer.w, h / layer.h);
    if (s >= 2) s = Math.floor(s);
    this.scale = Math.max(0.05, s);
    this.ox = this.gutter + 8;
    this.oy = 8;
    this.fitted = true;
    this.needs = true;
  }

  _resize() {
    const r = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    this.cw = Math.max(1, Math.round(r.width));
    this.ch = Math.max(1, Math.round(r.height));
    this.canvas.width = Math.round(this.cw * dpr);
    this.canvas.height = Math.round(this.ch * dpr);
    this.dpr = dpr;
    this._layoutGutter();
    this._reflow();
    if (this.lanes.length) this.fit();
    this.needs = true;
  }

  zoomAt(factor, sx, sy) {
    const max = this.ov ? this.ov.maxScale() : 200, min = this.ov ? 0.01 : 0.05;
    const s = Math.min(max, Math.max(min, this.scale * factor));
    const cx = (sx - this.ox) / this.scale, cy = (sy - this.oy) / this.scale;
    this.scale = s;
    this.ox = sx - cx * s;
    this.oy = sy - cy * s;
    this.needs = true;
    this.viewportChanged();
  }

  /** screen point -> {lane, page} (virtual) or {pfn} (physical) or {proc} (gutter) */
  hit(sx, sy) {
    if (this.ov) {
      if (sx < this.gutter) return null;
      const h = this.ov.at((sx - this.ox) / this.scale, (sy - this.oy) / this.scale);
      if (!h) return null;
      if (this.ov.detailAt(h.lane, h.page)) return h;
      return { bucket: this.ov.bucketOf(h.lane, h.page) };
    }
    const layer = this._layer();
    if (!layer) return null;
    const x = Math.floor((sx - this.ox) / this.scale), y = Math.floor((sy - this.oy) / this.scale);
    if (this.view === "physical") {
      if (sx < this.gutter || x < 0 || y < 0 || x >= layer.w || y >= layer.h) return null;
      const pfn = y * layer.w + x;
      return pfn < this.fcount ? { pfn } : null;
    }
    for (const lane of this.lanes) {
      if (y >= lane.row0 && y < lane.row0 + lane.rows) {
        if (sx < this.gutter) return { lane, proc: lane.proc };
        if (x < 0 || x >= this.cols) return null;
        const page = (y - lane.row0) * this.cols + x;
        return page < lane.npages ? { lane, page } : null;
      }
    }
    if (sx < this.gutter) {
      // a label taller than its lane (short lanes): its box
      for (const box of this._labelBoxes || []) {
        if (sy >= box.top && sy < box.bottom) return { lane: box.lane, proc: box.lane.proc };
      }
    }
    return null;
  }

  // ------------------------------------------------------------- painting
  _shade(m) {
    const k = m < 4096 ? m : 4095;
    let c = this.shades[k];
    if (!c) { c = pack(ksmShade(k)); this.shades[k] = c; }
    return c;
  }

  _cellColour(lane, i) {
    const k = lane.kinds[i];
    if (k === KSM && lane.pfns) return this._shade(this.fmap[lane.pfns[i]] || 2);
    return KIND_PACKED[k];
  }

  _paint(lane, i) {
    this.virt.set(this._idx(lane, i), this._cellColour(lane, i));
  }

  _frameColour(pfn) {
    const k = this.fkind[pfn], m = this.fmap[pfn];
    if (pfn === 0) {
      if (this.counts[KSM_ZERO] > 0) return KIND_PACKED[KSM_ZERO]; // some PTEs are KSM-placed
      return this.zeroPtes > 0 || m > 0 ? PHYS_ZERO : KIND_PACKED[NONE];
    }
    if (k === F_ZERO) return PHYS_ZERO;
    if (k === F_KSM) return this._shade(m);
    if (m > 1) return PHYS_COW;
    if (m === 1) return KIND_PACKED[ANON];
    return k === F_FREE ? KIND_PACKED[NONE] : PHYS_FREE;
  }

  _repaintKsm() {
    this._ksmRepaint = false;
    const px = this.virt.px;
    for (const lane of this.lanes) {
      if (!lane.pfns) continue;
      const kinds = lane.kinds, pfns = lane.pfns, base = lane.row0 * this.cols;
      for (let i = 0; i < lane.npages; i++) {
        if (kinds[i] !== KSM) continue;
        const c = this._shade(this.fmap[pfns[i]] || 2);
        if (px[base + i] !== c) this.virt.set(base + i, c);
      }
    }
    // cells still flashing keep their flash colour
    for (const b of this.flashes) {
      for (let j = 0; j < b.pages.length; j++) {
        const lane = b.lanes[j], i = b.pages[j], c = b.colours[j];
        this.virt.set(this._idx(lane, i), b.stage ? mix(c, this._cellColour(lane, i)) : pack(c));
      }
    }
  }

  _buildPhysical() {
    // one cell per frame, pfn order, the zero page (pfn 0) first
    const n = Math.max(1, this.fcount);
    this.physCount = this.fcount;
    let cols = COLS[COLS.length - 1];
    const r = this.canvas.getBoundingClientRect();
    const aspect = Math.max(0.3, ((r.width || 800) - this.gutter) / (r.height || 500));
    for (const c of COLS) { if (c * c / aspect >= n) { cols = c; break; } }
    const rows = Math.max(1, Math.ceil(n / cols));
    if (!this.phys || this.phys.w !== cols || this.phys.h !== rows) {
      this.phys = new Layer(cols, rows);
      if (this.view === "physical") this.fit();
    }
    const px = this.phys.px;
    px.fill(KIND_PACKED[NONE]);
    for (let pfn = 0; pfn < this.fcount; pfn++) px[pfn] = this._frameColour(pfn);
    this.phys.markAll();
    this.needs = true;
  }

  _publish() {
    const d = this.canvas.dataset;
    if (this.ov) {
      d.kindCounts = JSON.stringify(this.kindCounts());
      d.pages = String(this.ov.lanes.reduce((s, l) => s + l.npages, 0));
      return;
    }
    d.kindCounts = JSON.stringify(this.kindCounts());
    d.pages = String(this.lanes.reduce((s, l) => s + l.npages, 0));
    d.frames = String(this.fcount || 0);
  }

  /**
   * The drawn geometry, for tests and tools (CSS px from the canvas's top left): the cells'
   * origin, scale and columns, the gutter, and each label's box beside its lane's rows
   * (grid_overlay.labels). Written only when it changes.
   */
  _publishGeometry(boxes) {
    const r = (x) => Math.round(x * 10) / 10;
    const json = JSON.stringify({
      ox: r(this.ox), oy: r(this.oy), scale: r(this.scale), cols: this.cols, gutter: this.gutter,
      width: this.cw, height: this.ch, view: this.view,
      labels: boxes.map((b) => ({
        proc: b.lane.proc, vma: b.lane.vma, lines: b.lines, px: b.px,
        top: r(b.top), bottom: r(b.bottom), right: r(b.right), row_top: r(b.rowTop), row_bottom: r(b.rowBottom),
      })),
    });
    if (json !== this._geometry) { this._geometry = json; this.canvas.dataset.geometry = json; }
  }

  /** Draw if anything changed; returns true when it drew. */
  draw(now = performance.now()) {
    if (this.ov) return this.ov.draw();
    const layer = this._layer();
    if (!layer) return false;
    if (this.flashes.length) this._flashStages(now);
    if (this._ksmRepaint && now - (this._lastKsmRepaint || 0) >= KSM_REPAINT_MS) {
      this._lastKsmRepaint = now;
      this._repaintKsm();
    }
    // only the layer on screen is uploaded; the other keeps its dirty rectangle
    const dirtyCells = layer.flush();
    if (!this.needs && !dirtyCells) return false;
    this.needs = false;
    const ctx = this.ctx, s = this.scale;
    beginFrame(this);
    ctx.drawImage(layer.canvas, this.ox, this.oy, layer.w * s, layer.h * s);
    if (s >= 6) gridLines(this, layer, s);
    if (this.view === "virtual") {
      laneGaps(this, s);
      drawSelection(this, s);
    } else if (s >= 22) {
      mapCounts(this, layer, s);
    }
    ctx.restore();
    this._labelBoxes = labels(this, s);
    this._publishGeometry(this._labelBoxes);
    if (!this.lanes.length) {
      ctx.fillStyle = "#9aa4b2";
      const text = "no mappings yet: step forward (→)";
      let size = Math.round(this.gutter / 8);
      ctx.font = `${size}px system-ui, sans-serif`;
      const room = this.cw - this.gutter - 16; // a phone: the text fits beside the gutter
      if (room > 0 && ctx.measureText(text).width > room) {
        size = Math.max(9, Math.floor((size * room) / ctx.measureText(text).width));
        ctx.font = `${size}px system-ui, sans-serif`;
      }
      ctx.textAlign = "center";
      ctx.fillText(text, (this.cw + this.gutter) / 2, this.ch / 2);
      ctx.textAlign = "start";
    }
    if (this.view === "virtual") drawCursor(this, s);
    return true;
  }

  _cellRect(lane, i, s) {
    return [this.ox + (i % this.cols) * s, this.oy + (lane.row0 + ((i / this.cols) | 0)) * s];
  }

  // -------------------------------------------------------------- pointer
  _select(lane, a, b, silent = false) {
    if (a > b) [a, b] = [b, a];
    this.selection = { lane, a, b };
    this.needs = true;
    this.canvas.dataset.selection = `${lane.proc}/${lane.vma}/${a}-${b}`;
    if (silent) return;
    this.canvas.dispatchEvent(new CustomEvent("selectionchange", {
      detail: { proc: lane.proc, vma: lane.vma, pages: a === b ? String(a) : `${a}-${b}` },
    }));
  }

  selectPages(proc, vma, a, b, silent = false) {
    const lane = this.byKey.get(`${proc}/${vma}`);
    if (lane) this._select(lane, a, b, silent);
  }
}

