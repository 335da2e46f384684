// What the page grid draws over its cells: lines, lane rules, ksmd's cursor, the selection,
// physical map counts and the gutter labels. Functions of a PageGrid (g), no state of their own.

import { CURSOR_COLOUR } from "./palette.js";

export const BG = "#0b0e13";

/** Start a frame of grid ``g``: clear its canvas, clip to the cells right of the gutter
 * (the caller restores the context), pixels unsmoothed. */
export function beginFrame(g) {
  const ctx = g.ctx;
  ctx.setTransform(g.dpr, 0, 0, g.dpr, 0, 0);
  ctx.fillStyle = BG;
  ctx.fillRect(0, 0, g.cw, g.ch);
  ctx.save();
  ctx.beginPath();
  ctx.rect(g.gutter, 0, g.cw - g.gutter, g.ch);
  ctx.clip();
  ctx.imageSmoothingEnabled = false;
}

/** The visible cell range [x0, x1, y0, y1] of a layer. */
export function visible(g, layer, s) {
  const x0 = Math.max(0, Math.floor((g.gutter - g.ox) / s));
  const x1 = Math.min(layer.w, Math.ceil((g.cw - g.ox) / s));
  const y0 = Math.max(0, Math.floor(-g.oy / s));
  const y1 = Math.min(layer.h, Math.ceil((g.ch - g.oy) / s));
  return [x0, x1, y0, y1];
}

/** Lines between cells when they are big enough to need them. */
export function gridLines(g, layer, s) {
  const ctx = g.ctx;
  const [x0, x1, y0, y1] = visible(g, layer, s);
  ctx.strokeStyle = BG;
  ctx.lineWidth = Math.min(3, Math.max(1, s / 8));
  ctx.beginPath();
  for (let x = x0; x <= x1; x++) { const X = g.ox + x * s; ctx.moveTo(X, g.oy + y0 * s); ctx.lineTo(X, g.oy + y1 * s); }
  for (let y = y0; y <= y1; y++) { const Y = g.oy + y * s; ctx.moveTo(g.ox + x0 * s, Y); ctx.lineTo(g.ox + x1 * s, Y); }
  ctx.stroke();
}

/** A faint rule in the gap row between two lanes. */
export function laneGaps(g, s) {
  // the gap row between lanes: a faint rule
  const ctx = g.ctx;
  ctx.fillStyle = "#2d3440";
  for (const lane of g.lanes.slice(1)) {
    const y = g.oy + (lane.row0 - 0.5) * s;
    ctx.fillRect(g.ox, y - 0.5, g.cols * s, 1);
  }
}

/** ksmd's cursor: a ring around the page it will scan next. */
export function drawCursor(g, s) {
  const c = g.cursor;
  if (!c) return;
  const lane = g.byKey.get(`${c.proc}/${c.vma}`);
  if (!lane || c.page === null || c.page === undefined || c.page >= lane.npages) return;
  const [x, y] = g._cellRect(lane, c.page, s);
  const ctx = g.ctx;
  const pad = Math.max(3, s * 0.35);
  ctx.lineWidth = Math.max(2, Math.min(5, s / 4));
  ctx.strokeStyle = "#000";
  ctx.strokeRect(x - pad - 1, y - pad - 1, s + 2 * pad + 2, s + 2 * pad + 2);
  ctx.strokeStyle = CURSOR_COLOUR;
  ctx.strokeRect(x - pad, y - pad, s + 2 * pad, s + 2 * pad);
  ctx.font = `bold ${Math.round((g.labelPx || g.gutter / 8) * 0.8)}px system-ui, sans-serif`;
  ctx.fillStyle = CURSOR_COLOUR;
  ctx.textBaseline = "bottom";
  ctx.fillText("ksmd", x - pad, y - pad - 2);
  g.canvas.dataset.cursor = `${c.proc}/${c.vma}/${c.page}`;
}

/** The pages selected for an event: one dashed outline. */
export function drawSelection(g, s) {
  const sel = g.selection;
  if (!sel) return;
  const lane = sel.lane, C = g.cols;
  const c0 = sel.a % C, r0 = Math.floor(sel.a / C), c1 = sel.b % C, r1 = Math.floor(sel.b / C);
  const X = (c) => g.ox + c * s, Y = (r) => g.oy + (lane.row0 + r) * s;
  const pts = r0 === r1
    ? [[c0, r0], [c1 + 1, r0], [c1 + 1, r0 + 1], [c0, r0 + 1]]
    : [[c0, r0], [C, r0], [C, r1], [c1 + 1, r1], [c1 + 1, r1 + 1], [0, r1 + 1], [0, r0 + 1], [c0, r0 + 1]];
  const ctx = g.ctx;
  ctx.save();
  ctx.beginPath();
  pts.forEach(([c, r], i) => (i ? ctx.lineTo(X(c), Y(r)) : ctx.moveTo(X(c), Y(r))));
  ctx.closePath();
  ctx.setLineDash([8, 5]);
  ctx.lineWidth = 3;
  ctx.strokeStyle = "#000";
  ctx.stroke();
  ctx.lineDashOffset = 6;
  ctx.lineWidth = 2;
  ctx.strokeStyle = "#ffffff";
  ctx.stroke();
  ctx.restore();
}

/** Physical view: how many PTEs map each frame, written in its cell. */
export function mapCounts(g, layer, s) {
  const ctx = g.ctx;
  const [x0, x1, y0, y1] = visible(g, layer, s);
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      const pfn = y * layer.w + x;
      if (pfn >= g.fcount) break;
      const n = g.mapcount(pfn);
      if (!n) continue;
      const text = String(n);
      ctx.font = `bold ${Math.min(18, Math.floor(s * 0.55), Math.floor((s * 1.5) / text.length))}px system-ui, sans-serif`;
      ctx.fillStyle = "#000";
      ctx.fillText(text, g.ox + (x + 0.5) * s, g.oy + (y + 0.5) * s);
    }
  }
  ctx.textAlign = "start";
}

/**
 * The gutter: process and mapping names beside their lanes. Each label sits on its lane's
 * rows: the name and mapping over the page count, from the lane's top, when the lane is tall
 * enough; else one line (name and mapping) centred on the lane, in smaller type down to 9 px
 * when the lane is short; a label that would overlap the one above is left out (zoom in to
 * read it). Returns the boxes drawn: {lane, top, bottom, right, rowTop, rowBottom, lines, px}.
 * ``lanes`` and ``span(lane)`` (its rows' top from the origin and height, in screen px) are
 * the page grid's by default; the overview passes its own (overview.js).
 */
export function labels(g, s, lanes = g.lanes, span = (lane) => [lane.row0 * s, lane.rows * s]) {
  const ctx = g.ctx;
  ctx.fillStyle = "#0f131a";
  ctx.fillRect(0, 0, g.gutter, g.ch);
  ctx.fillStyle = "#e6edf3";
  ctx.textBaseline = "top";
  const big = g.labelPx || Math.round(Math.min(22, Math.max(13, g.gutter / 8)));
  if (g.view === "physical") {
    ctx.font = `bold ${big}px system-ui, sans-serif`;
    ctx.fillText("frames", 10, 10);
    ctx.font = `${big - 4}px system-ui, sans-serif`;
    ctx.fillStyle = "#9aa4b2";
    if (g._usedAt !== g._version) {
      g._usedAt = g._version;
      g._used = 0;
      for (let p = 0; p < g.fcount; p++) if (g.mapcount(p) > 0) g._used++;
    }
    ctx.fillText(`${g._used} mapped`, 10, 14 + big);
    ctx.fillText("number = PTEs", 10, 18 + 2 * big);
    return [];
  }
  ctx.save();
  ctx.beginPath();
  ctx.rect(0, 0, g.gutter, g.ch);
  ctx.clip();
  const boxes = [];
  let lastBottom = -Infinity;
  for (const lane of lanes) {
    const [off, height] = span(lane);
    const rowTop = g.oy + off, rowBottom = rowTop + height;
    if (rowBottom <= 0 || rowTop >= g.ch) continue;
    // the part of the lane on screen
    const top = Math.max(rowTop, 0), bottom = Math.min(rowBottom, g.ch), room = bottom - top;
    const lines = room >= 2 * big + 4 ? 2 : 1;
    const px = lines === 2 ? big : Math.max(9, Math.min(big, Math.floor(room)));
    const h = lines === 2 ? 2 * big + 3 : px;
    const y = lines === 2 ? top + Math.min(2, room - h) : (top + bottom - h) / 2;
    if (y < lastBottom + 1) continue;
    ctx.font = `bold ${px}px system-ui, sans-serif`;
    ctx.fillStyle = "#e6edf3";
    ctx.fillText(lane.proc, 10, y);
    const w = ctx.measureText(lane.proc).width;
    const small = lines === 2 ? px - 3 : Math.max(8, px - 2);
    ctx.font = `${small}px ui-monospace, "DejaVu Sans Mono", monospace`;
    ctx.fillStyle = "#9aa4b2";
    ctx.fillText(lane.vma, 16 + w, y + (px - small) * 0.7);
    let right = 16 + w + ctx.measureText(lane.vma).width;
    if (lines === 2) {
      // the page count in the gutter's width: smaller type for a long count, never cut
      const count = `${lane.npages.toLocaleString("en")} pages`;
      let cpx = small;
      while (cpx > 8 && 10 + ctx.measureText(count).width > g.gutter - 2) {
        cpx -= 1;
        ctx.font = `${cpx}px ui-monospace, "DejaVu Sans Mono", monospace`;
      }
      ctx.fillText(count, 10, y + big + 3);
      right = Math.max(right, 10 + ctx.measureText(count).width);
    }
    boxes.push({ lane, top: y, bottom: y + h, right, rowTop, rowBottom, lines, px });
    lastBottom = y + h;
  }
  ctx.restore();
  return boxes;
}
