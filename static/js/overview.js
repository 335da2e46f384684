// The overview of a large session (docs/protocol.md, "Large sessions"): every page of the
// host on screen at once, zoomable down to one labelled cell per page.
//
// Layout: each mapping (lane) is cut into tiles of 64 x 64 pages laid left to right, the
// pages inside a tile in Z order (Morton), so that any aligned run of 4^j pages, the server's
// buckets, is a square of 2^j x 2^j pages. The overview image has one pixel per quarter of a
// bucket: a bucket is drawn as 2 x 2 quarters that share out its pages by kind (largest share
// first, by largest remainder), except that a kind present in the bucket at all takes a
// quarter from the largest share, in the order of OV_PRIORITY (a KSM-placed zero page first,
// then a stale rmap_item, ...): one dirty-marked zero page among 4,096 pages still gets a
// quarter of its bucket. Per-page data (kinds, pfns) comes only for the tiles the viewer
// shows when zoomed in (its `viewport` message); those pages are drawn one cell per page.

import { Layer, pack } from "./cell_image.js";
import { BG, beginFrame, labels } from "./grid_overlay.js";
import { CURSOR_COLOUR, KIND_COLOURS, OV_PRIORITY, ksmShade } from "./palette.js";
import { b64bytes, b64int32, frameRecords } from "./protocol.js";

export const TILE = 64; // pages per tile side
const TP = TILE * TILE; // pages per tile
const MAX_DETAIL = 1 << 18; // pages of per-page data a viewport may ask for

// Morton order inside a tile: z -> (x, y) and back
const ZX = new Uint8Array(TP), ZY = new Uint8Array(TP), ZI = new Uint16Array(TP);
for (let z = 0; z < TP; z++) {
  let x = 0, y = 0;
  for (let b = 0; b < 6; b++) { x |= ((z >> (2 * b)) & 1) << b; y |= ((z >> (2 * b + 1)) & 1) << b; }
  ZX[z] = x; ZY[z] = y; ZI[y * TILE + x] = z;
}

function readVarint(buf, pos) {
  let v = 0, shift = 0, x;
  do { x = buf[pos.p++]; v += (x & 0x7f) * 2 ** shift; shift += 7; } while (x & 0x80);
  return v;
}

/** Bucket records -> calls fn(bucket, counts) with counts a reused Uint32Array by kind. */
export function forEachBucket(b64, n, nk, gaps, fn) {
  const buf = b64bytes(b64);
  const pos = { p: 0 };
  const counts = new Uint32Array(nk);
  let b = -1;
  for (let j = 0; j < n && pos.p < buf.length; j++) {
    b = gaps ? b + readVarint(buf, pos) + 1 : b + 1;
    const mask = readVarint(buf, pos);
    counts.fill(0);
    for (let k = 0; k < nk; k++) if (mask & (1 << k)) counts[k] = readVarint(buf, pos);
    fn(b, counts);
  }
}

/** The four quarters of a bucket: kind ids, proportional with the priority minorities. */
export function quarters(counts, prio) {
  const nk = counts.length;
  let total = 0;
  for (let k = 0; k < nk; k++) total += counts[k];
  const alloc = new Array(nk).fill(0);
  if (!total) return [0, 0, 0, 0];
  const rem = [];
  let used = 0;
  for (let k = 0; k < nk; k++) {
    const exact = (4 * counts[k]) / total;
    alloc[k] = Math.floor(exact);
    used += alloc[k];
    if (counts[k]) rem.push([exact - alloc[k], k]);
  }
  rem.sort((a, b) => b[0] - a[0]);
  for (let j = 0; used < 4; j++, used++) alloc[rem[j % rem.length][1]]++;
  for (const k of prio) {
    if (!counts[k] || alloc[k]) continue;
    let donor = -1;
    for (let d = 0; d < nk; d++) if (alloc[d] > 1 && (donor < 0 || alloc[d] > alloc[donor])) donor = d;
    if (donor < 0) break;
    alloc[donor]--; alloc[k] = 1;
  }
  const out = [];
  for (const k of prio) for (let j = 0; j < alloc[k]; j++) out.push(k);
  for (let k = 0; k < nk; k++) if (!prio.includes(k)) for (let j = 0; j < alloc[k]; j++) out.push(k);
  return out.slice(0, 4);
}

export class Overview {
  /** g: the PageGrid (its canvas, ctx, gutter, ox/oy/scale and kind table). */
  constructor(g, msg, names, packed) {
    this.g = g;
    this.names = names;
    this.packed = packed;
    this.nk = names.length;
    this.prio = OV_PRIORITY.map((n) => names.indexOf(n)).filter((k) => k >= 0);
    const ov = msg.overview;
    this.lanes = [];
    let y = 0;
    const npTotal = msg.procs.reduce((s, p) => s + p.vmas.reduce((t, v) => t + v.npages, 0), 0);
    // tiles per row: the host about as wide as the screen is high
    const r = g.canvas.getBoundingClientRect();
    const aspect = Math.max(0.5, ((r.width || 1200) - g.gutter - 16) / Math.max(1, (r.height || 700) - 16));
    const tiles = Math.ceil(npTotal / TP);
    this.tpr = Math.max(1, Math.ceil(Math.sqrt(tiles * aspect)));
    for (const p of msg.procs) {
      for (const v of p.vmas) {
        const ntiles = Math.max(1, Math.ceil(v.npages / TP));
        const rows = Math.ceil(ntiles / this.tpr);
        const lane = { proc: p.name, vma: v.name, uid: v.uid, npages: v.npages, y0: y, rows, detail: [] };
        this.lanes.push(lane);
        y += rows * TILE + TILE / 2; // half a tile between lanes
      }
    }
    this.w = this.tpr * TILE;
    this.h = Math.max(1, y - TILE / 2);
    this.byUid = new Map(this.lanes.map((l) => [l.uid, l]));
    this.fmap = new Map();
    this.sent = "";
    this.load(msg);
  }

  /** A snapshot of this session (same mappings): the buckets and the detail it carries. */
  load(msg) {
    const ov = msg.overview;
    this.bucket = ov.bucket;
    this.side = Math.round(Math.sqrt(this.bucket)); // buckets are squares (powers of four)
    this.q = Math.max(1, this.side / 2); // pages per quarter side
    const lw = Math.ceil(this.w / this.q), lh = Math.ceil(this.h / this.q);
    this.layer = new Layer(lw, lh);
    this.layer.px.fill(pack([11, 14, 19]));
    this.counts = new Map(); // uid -> Uint32Array(nbuckets * nk)
    const total = new Float64Array(this.nk);
    for (const l of ov.lanes) {
      const lane = this.byUid.get(l.uid);
      if (!lane) continue;
      const arr = new Uint32Array(l.n * this.nk);
      this.counts.set(l.uid, arr);
      forEachBucket(l.d, l.n, this.nk, false, (b, c) => {
        arr.set(c, b * this.nk);
        for (let k = 0; k < this.nk; k++) total[k] += c[k];
        this._paintBucket(lane, b, c);
      });
    }
    this.totals = Array.from(total);
    for (const lane of this.lanes) lane.detail = [];
    for (const d of ov.detail) {
      const lane = this.byUid.get(d.uid);
      if (lane) lane.detail.push({ lo: d.lo, hi: d.hi, kinds: b64bytes(d.kind), pfns: b64int32(d.pfn) });
    }
    this.fmap.clear();
    for (const [pfn, , mapcount] of frameRecords(ov.ksm_frames.d, ov.ksm_frames.n)) this.fmap.set(pfn, mapcount);
    this._buildDetail();
    this.layer.markAll();
    this.g.needs = true;
  }

  /** A delta's changed buckets. */
  apply(od) {
    if (od.bucket !== this.bucket) return;
    for (const l of od.lanes) {
      const lane = this.byUid.get(l.uid), arr = this.counts.get(l.uid);
      if (!lane || !arr) continue;
      forEachBucket(l.d, l.n, this.nk, true, (b, c) => {
        const at = b * this.nk;
        for (let k = 0; k < this.nk; k++) { this.totals[k] += c[k] - arr[at + k]; arr[at + k] = c[k]; }
        this._paintBucket(lane, b, c);
      });
    }
    this.g.needs = true;
  }

  // --------------------------------------------------------------- geometry
  /** page -> [x, y] in page space */
  xy(lane, p) {
    const t = Math.floor(p / TP), z = p % TP;
    return [(t % this.tpr) * TILE + ZX[z], lane.y0 + Math.floor(t / this.tpr) * TILE + ZY[z]];
  }

  /** page space -> {lane, page} or null */
  at(x, y) {
    if (x < 0 || x >= this.w) return null;
    for (const lane of this.lanes) {
      if (y < lane.y0 || y >= lane.y0 + lane.rows * TILE) continue;
      const tx = Math.floor(x / TILE), ty = Math.floor((y - lane.y0) / TILE);
      const page = (ty * this.tpr + tx) * TP + ZI[(Math.floor(y - lane.y0) % TILE) * TILE + (Math.floor(x) % TILE)];
      return page < lane.npages ? { lane, page } : null;
    }
    return null;
  }

  _paintBucket(lane, b, c) {
    const [x, y] = this.xy(lane, b * this.bucket);
    let only = -1; // a bucket of one kind (most of them): no share-out
    for (let k = 0; k < this.nk; k++) if (c[k]) { if (only === -1) only = k; else { only = -2; break; } }
    const qs = only >= 0 ? [only, only, only, only] : quarters(c, this.prio);
    const L = this.layer, q = this.q;
    const lx = Math.floor(x / q), ly = Math.floor(y / q);
    if (this.side === 1) { L.set(ly * L.w + lx, this.packed[qs[0]]); return; }
    L.set(ly * L.w + lx, this.packed[qs[0]]);
    L.set(ly * L.w + lx + 1, this.packed[qs[1]]);
    L.set((ly + 1) * L.w + lx, this.packed[qs[2]]);
    L.set((ly + 1) * L.w + lx + 1, this.packed[qs[3]]);
  }

  // ------------------------------------------------------------- detail
  detailAt(lane, p) {
    for (const d of lane.detail) if (p >= d.lo && p < d.hi) return d;
    return null;
  }

  /** One page changed (a delta's page record inside the detail). */
  setPage(lane, p, kind, pfn) {
    const d = this.detailAt(lane, p);
    if (!d) return -1;
    const old = d.kinds[p - d.lo];
    d.kinds[p - d.lo] = kind;
    d.pfns[p - d.lo] = pfn;
    this._paintPage(lane, d, p);
    this.g.needs = true;
    return old;
  }

  _colour(kind, pfn) {
    if (this.names[kind] === "ksm") return pack(ksmShade(this.fmap.get(pfn) || 2));
    return this.packed[kind];
  }

  _buildDetail() {
    // one pixel per page over the bounding box of the detail tiles
    let x0 = Infinity, y0 = Infinity, x1 = -1, y1 = -1;
    for (const lane of this.lanes) {
      for (const d of lane.detail) {
        for (let t = Math.floor(d.lo / TP); t * TP < d.hi; t++) {
          const [x, y] = this.xy(lane, t * TP);
          x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + TILE); y1 = Math.max(y1, y + TILE);
        }
      }
    }
    if (x1 < 0) { this.detail = null; return; }
    this.detail = { x0, y0, layer: new Layer(x1 - x0, y1 - y0) };
    this.detail.layer.px.fill(0); // transparent where there is no detail
    for (const lane of this.lanes) for (const d of lane.detail) for (let p = d.lo; p < d.hi; p++) this._paintPage(lane, d, p);
    this.detail.layer.markAll();
  }

  _paintPage(lane, d, p) {
    if (!this.detail) return;
    const [x, y] = this.xy(lane, p);
    const L = this.detail.layer;
    L.set((y - this.detail.y0) * L.w + (x - this.detail.x0), this._colour(d.kinds[p - d.lo], d.pfns[p - d.lo]));
  }

  /** The viewport to ask for: the bucket for this zoom, detail tiles when few enough. */
  viewport() {
    const g = this.g, s = g.scale;
    // a bucket of about 4 screen pixels a side or more, a power of four, never finer than 16 pages
    let bucket = 4096;
    while (bucket > 64 && Math.sqrt(bucket / 4) * s >= 4) bucket /= 4;
    bucket = Math.max(bucket, this.minBucket || 1);
    const x0 = Math.max(0, (g.gutter - g.ox) / s), x1 = Math.min(this.w, (g.cw - g.ox) / s);
    const y0 = Math.max(0, -g.oy / s), y1 = Math.min(this.h, (g.ch - g.oy) / s);
    const detail = [];
    if (x1 > x0 && y1 > y0 && ((x1 - x0) * (y1 - y0)) <= MAX_DETAIL / 2) {
      const tx0 = Math.floor(x0 / TILE), tx1 = Math.ceil(x1 / TILE);
      let pages = 0;
      for (const lane of this.lanes) {
        const ty0 = Math.max(0, Math.floor((y0 - lane.y0) / TILE)), ty1 = Math.min(lane.rows, Math.ceil((y1 - lane.y0) / TILE));
        for (let ty = ty0; ty < ty1; ty++) {
          const lo = (ty * this.tpr + tx0) * TP, hi = Math.min(lane.npages, (ty * this.tpr + tx1) * TP);
          if (hi > lo) { detail.push([lane.uid, lo, hi]); pages += hi - lo; }
        }
      }
      if (pages > MAX_DETAIL || detail.length > 64) detail.length = 0;
    }
    return { type: "viewport", bucket, detail };
  }

  // ---------------------------------------------------------------- draw
  fit() {
    const g = this.g;
    const w = g.cw - g.gutter - 16, h = g.ch - 16;
    g.scale = Math.min(w / this.w, h / this.h);
    g.ox = g.gutter + 8;
    g.oy = 8;
    g.needs = true;
  }

  maxScale() { return 64; }

  draw() {
    const g = this.g, ctx = g.ctx, s = g.scale;
    const dirty = this.layer.flush() | (this.detail ? this.detail.layer.flush() : false);
    if (!g.needs && !dirty) return false;
    g.needs = false;
    beginFrame(g);
    ctx.drawImage(this.layer.canvas, g.ox, g.oy, this.layer.w * this.q * s, this.layer.h * this.q * s);
    if (this.detail) {
      const d = this.detail;
      ctx.drawImage(d.layer.canvas, g.ox + d.x0 * s, g.oy + d.y0 * s, d.layer.w * s, d.layer.h * s);
    }
    if (s >= 6) this._cellLines(s);
    this._cursor(s);
    ctx.restore();
    g._labelBoxes = this._labels(s);
    g._publishGeometry(g._labelBoxes);
    return true;
  }

  _visible(s) {
    const g = this.g;
    return [Math.max(0, Math.floor((g.gutter - g.ox) / s)), Math.min(this.w, Math.ceil((g.cw - g.ox) / s)),
      Math.max(0, Math.floor(-g.oy / s)), Math.min(this.h, Math.ceil((g.ch - g.oy) / s))];
  }

  /** Page level: lines between cells, and each page's number when the cell has room. */
  _cellLines(s) {
    const g = this.g, ctx = g.ctx;
    const [x0, x1, y0, y1] = this._visible(s);
    ctx.strokeStyle = BG;
    ctx.lineWidth = Math.min(3, Math.max(1, s / 8));
    ctx.beginPath();
    for (let x = x0; x <= x1; x++) { const X = g.ox + x * s; ctx.moveTo(X, g.oy + y0 * s); ctx.lineTo(X, g.oy + y1 * s); }
    for (let y = y0; y <= y1; y++) { const Y = g.oy + y * s; ctx.moveTo(g.ox + x0 * s, Y); ctx.lineTo(g.ox + x1 * s, Y); }
    ctx.stroke();
    if (s < 26) return;
    ctx.font = `${Math.min(13, Math.floor(s / 4))}px ui-monospace, monospace`;
    ctx.fillStyle = "#000";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        const h = this.at(x, y);
        if (h) ctx.fillText(String(h.page), g.ox + (x + 0.5) * s, g.oy + (y + 0.5) * s);
      }
    }
    ctx.textAlign = "start";
  }

  _cursor(s) {
    const c = this.g.cursor;
    if (!c) return;
    const lane = this.lanes.find((l) => l.proc === c.proc && l.vma === c.vma);
    if (!lane || c.page == null || c.page >= lane.npages) return;
    const [x, y] = this.xy(lane, c.page);
    const ctx = this.g.ctx, r = Math.max(6, s);
    ctx.lineWidth = 2;
    ctx.strokeStyle = CURSOR_COLOUR;
    ctx.strokeRect(this.g.ox + x * s - r / 2, this.g.oy + y * s - r / 2, r + s, r + s);
    this.g.canvas.dataset.cursor = `${c.proc}/${c.vma}/${c.page}`;
  }

  /** The gutter: each guest's label on its lane (grid_overlay.labels, as the page grid
   * places them), then how many pages a bucket holds. */
  _labels(s) {
    const g = this.g, ctx = g.ctx;
    const boxes = labels(g, s, this.lanes, (lane) => [lane.y0 * s, lane.rows * TILE * s]);
    const big = g.labelPx || Math.round(Math.min(22, Math.max(13, g.gutter / 8)));
    ctx.fillStyle = "#0f131a";
    ctx.fillRect(0, g.ch - big - 8, g.gutter, big + 8);
    ctx.font = `${big - 4}px system-ui, sans-serif`;
    ctx.fillStyle = "#9aa4b2";
    ctx.textBaseline = "top";
    ctx.fillText(`overview: ${this.bucket} pages / bucket`, 10, g.ch - big - 4);
    return boxes;
  }

  /** The bucket under a page: its range and its counts by kind name. */
  bucketOf(lane, page) {
    const b = Math.floor(page / this.bucket), arr = this.counts.get(lane.uid);
    const counts = {};
    if (arr) for (let k = 0; k < this.nk; k++) if (arr[b * this.nk + k]) counts[this.names[k]] = arr[b * this.nk + k];
    return { proc: lane.proc, vma: lane.vma, uid: lane.uid, bucket: b, lo: b * this.bucket, hi: Math.min(lane.npages, (b + 1) * this.bucket), counts };
  }

  /** Zoom so that pages [lo, hi) of a lane fill the screen. */
  zoomTo(lane, lo, hi) {
    const g = this.g;
    const [xa, ya] = this.xy(lane, lo);
    const side = Math.max(1, Math.sqrt(hi - lo));
    const s = Math.min(this.maxScale(), Math.min((g.cw - g.gutter - 16) / side, (g.ch - 16) / side));
    g.scale = s;
    g.ox = g.gutter + 8 + ((g.cw - g.gutter - 16) - side * s) / 2 - xa * s;
    g.oy = 8 + ((g.ch - 16) - side * s) / 2 - ya * s;
    g.needs = true;
  }

  kindCounts() {
    const out = {};
    this.names.forEach((n, k) => { out[n] = this.totals[k]; });
    return out;
  }
}

/** The inspector for a bucket: its pages by kind, its range, a button that zooms in. */
export function inspectBucket(view, info) {
  const el = view.root.querySelector(".inspector") || document.querySelector(".inspector");
  if (!el) return;
  delete el.dataset.selected;
  el.dataset.bucket = `${info.proc}/${info.vma}/${info.lo}-${info.hi}`;
  const h = document.createElement("h3");
  h.textContent = `${info.proc} ${info.vma} pages ${info.lo}–${info.hi - 1}`;
  const dl = document.createElement("dl");
  dl.className = "bucket-counts";
  const labels = Object.fromEntries((view.kindTable?.pages || []).map((k) => [k.name, k.label]));
  const add = (k, v, kind) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = String(v);
    if (kind) dd.dataset.kind = kind;
    dl.append(dt, dd);
  };
  add("pages in this bucket", (info.hi - info.lo).toLocaleString("en"));
  for (const [name, n] of Object.entries(info.counts)) {
    const c = KIND_COLOURS[name];
    add(`${labels[name] || name}${c ? "" : ""}`, n.toLocaleString("en"), name);
  }
  const b = document.createElement("button");
  b.type = "button";
  b.className = "zoom-in";
  b.textContent = "zoom in on these pages";
  b.addEventListener("click", () => view.grid.zoomToPages(info.proc, info.vma, info.lo, info.hi));
  el.replaceChildren(h, dl, b);
}
