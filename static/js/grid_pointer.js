// Pointer input of the page grid: wheel zoom, pinch zoom (two pointers), drag to pan, click
// to inspect, shift + drag (or alt/ctrl + click) to select pages for an event; with the grid
// focused, + / - zoom about the centre and 0 fits. Emits pageclick, procclick, frameclick,
// bucketclick (the overview of a large session) and selectionchange events on the canvas.

export function bindPointer(g) {
  const cv = g.canvas;
  let drag = null;
  const pos = (e) => { const r = cv.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  cv.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [x, y] = pos(e);
    g.zoomAt(e.deltaY < 0 ? 1.2 : 1 / 1.2, x, y);
  }, { passive: false });
  const touches = new Map();
  let pinch = null;
  cv.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const zoom = { "+": 1.5, "=": 1.5, "-": 1 / 1.5, _: 1 / 1.5 }[e.key];
    if (zoom) g.zoomAt(zoom, (g.gutter + g.cw) / 2, g.ch / 2);
    else if (e.key === "0") g.fit();
    else return;
    e.preventDefault();
    e.stopPropagation(); // the page's keys (+ / - speed) are for the page, not the focused grid
  });
  cv.addEventListener("pointerdown", (e) => {
    touches.set(e.pointerId, pos(e));
    if (touches.size === 2) {
      const [a, b] = [...touches.values()];
      pinch = { d: Math.hypot(a[0] - b[0], a[1] - b[1]) || 1 };
      drag = null;
      return;
    }
    const [x, y] = pos(e);
    const h = g.hit(x, y);
    drag = { x, y, ox: g.ox, oy: g.oy, moved: false, select: e.shiftKey && h && h.page !== undefined, start: h };
    if (drag.select) g._select(h.lane, h.page, h.page);
    cv.setPointerCapture(e.pointerId);
  });
  cv.addEventListener("pointermove", (e) => {
    if (touches.has(e.pointerId)) touches.set(e.pointerId, pos(e));
    if (pinch && touches.size === 2) {
      const [a, b] = [...touches.values()];
      const d = Math.hypot(a[0] - b[0], a[1] - b[1]) || 1;
      g.zoomAt(d / pinch.d, (a[0] + b[0]) / 2, (a[1] + b[1]) / 2);
      pinch.d = d;
      return;
    }
    if (!drag) return;
    const [x, y] = pos(e);
    if (Math.abs(x - drag.x) + Math.abs(y - drag.y) > 4) drag.moved = true;
    if (drag.select) {
      const h = g.hit(x, y);
      if (h && h.lane === drag.start.lane && h.page !== undefined) g._select(h.lane, drag.start.page, h.page);
    } else if (drag.moved) {
      g.ox = drag.ox + x - drag.x; g.oy = drag.oy + y - drag.y; g.needs = true;
      if (g.viewportChanged) g.viewportChanged();
    }
  });
  const lift = (e) => { touches.delete(e.pointerId); if (touches.size < 2) pinch = null; };
  cv.addEventListener("pointercancel", lift);
  cv.addEventListener("pointerup", (e) => {
    lift(e);
    if (!drag) return;
    const d = drag; drag = null;
    if (d.select || d.moved) return;
    const [x, y] = pos(e);
    const h = g.hit(x, y);
    if (!h) return;
    if (h.bucket) cv.dispatchEvent(new CustomEvent("bucketclick", { detail: h.bucket }));
    else if (h.pfn !== undefined) cv.dispatchEvent(new CustomEvent("frameclick", { detail: { pfn: h.pfn, kind: h.pfn === 0 ? 3 : g.fkind[h.pfn], mapcount: g.mapcount(h.pfn) } }));
    else if (h.page !== undefined) {
      if (e.altKey || e.ctrlKey || e.metaKey) g._select(h.lane, h.page, h.page);
      cv.dispatchEvent(new CustomEvent("pageclick", { detail: { proc: h.lane.proc, vma: h.lane.vma, page: h.page } }));
    } else if (h.proc) cv.dispatchEvent(new CustomEvent("procclick", { detail: { proc: h.proc } }));
  });
  cv.addEventListener("dblclick", () => g.fit());
}
