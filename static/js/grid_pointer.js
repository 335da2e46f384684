// Pointer input of the page grid: wheel zoom, drag to pan, click to inspect, shift + drag
// (or alt/ctrl + click) to select pages for an event. Emits pageclick, procclick,
// frameclick and selectionchange events on the canvas.

export function bindPointer(g) {
  const cv = g.canvas;
  let drag = null;
  const pos = (e) => { const r = cv.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  cv.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [x, y] = pos(e);
    g.zoomAt(e.deltaY < 0 ? 1.2 : 1 / 1.2, x, y);
  }, { passive: false });
  cv.addEventListener("pointerdown", (e) => {
    const [x, y] = pos(e);
    const h = g.hit(x, y);
    drag = { x, y, ox: g.ox, oy: g.oy, moved: false, select: e.shiftKey && h && h.page !== undefined, start: h };
    if (drag.select) g._select(h.lane, h.page, h.page);
    cv.setPointerCapture(e.pointerId);
  });
  cv.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const [x, y] = pos(e);
    if (Math.abs(x - drag.x) + Math.abs(y - drag.y) > 4) drag.moved = true;
    if (drag.select) {
      const h = g.hit(x, y);
      if (h && h.lane === drag.start.lane && h.page !== undefined) g._select(h.lane, drag.start.page, h.page);
    } else if (drag.moved) {
      g.ox = drag.ox + x - drag.x; g.oy = drag.oy + y - drag.y; g.needs = true;
    }
  });
  cv.addEventListener("pointerup", (e) => {
    if (!drag) return;
    const d = drag; drag = null;
    if (d.select || d.moved) return;
    const [x, y] = pos(e);
    const h = g.hit(x, y);
    if (!h) return;
    if (h.pfn !== undefined) cv.dispatchEvent(new CustomEvent("frameclick", { detail: { pfn: h.pfn, kind: h.pfn === 0 ? 3 : g.fkind[h.pfn], mapcount: g.mapcount(h.pfn) } }));
    else if (h.page !== undefined) {
      if (e.altKey || e.ctrlKey || e.metaKey) g._select(h.lane, h.page, h.page);
      cv.dispatchEvent(new CustomEvent("pageclick", { detail: { proc: h.lane.proc, vma: h.lane.vma, page: h.page } }));
    } else if (h.proc) cv.dispatchEvent(new CustomEvent("procclick", { detail: { proc: h.proc } }));
  });
  cv.addEventListener("dblclick", () => g.fit());
}
