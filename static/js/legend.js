// The legend's counts: how many cells of each kind every grid shows, and, where a counter of
// the kernel counts the same pages differently, one note that says by how much and why.
// The cells come from the grid (sim/snapshot.py page_kind), the counters from the websocket:
// nothing here is guessed.

import { count } from "./format.js";

/** The differences between a view's cells and its counters, as sentences (none: agree). */
export function reconcile(cells, g) {
  const n = (k) => cells[k] || 0;
  const notes = [];
  if (g.pages_volatile != null && g.pages_volatile !== n("volatile")) {
    const d = g.pages_volatile - n("volatile");
    notes.push({
      kind: "volatile",
      text: `pages_volatile ${count(g.pages_volatile)} = ${count(n("volatile"))} volatile cells + ${count(d)} rmap_items in no tree on cells drawn otherwise (a zero-merged page's item until ksmd's next pass, a page smart scan skipped)`,
    });
  }
  if (g.pages_unshared != null && g.pages_unshared !== n("unstable")) {
    notes.push({
      kind: "unstable",
      text: `pages_unshared ${count(g.pages_unshared)} vs ${count(n("unstable"))} unstable-tree cells: ${count(g.pages_unshared - n("unstable"))} unstable items on pages drawn otherwise`,
    });
  }
  if (g.pages_shared != null && g.pages_sharing != null) {
    const items = g.pages_shared + g.pages_sharing;
    const drawn = n("ksm") + n("stale");
    if (n("stale") || items !== n("ksm")) {
      const rest = items - drawn;
      const tail = rest > 0 ? ` + ${count(rest)} other` : rest < 0 ? `; ${count(-rest)} KSM cells not yet accounted (ksmd adds their rmap_items when its scan reaches them)` : "";
      notes.push({
        kind: "stale",
        text: `pages_shared + pages_sharing ${count(items)} = ${count(n("ksm"))} KSM cells${n("stale") ? ` + ${count(n("stale"))} unmerged cells whose rmap_item ksmd drops on its next pass` : ""}${tail}`,
      });
    }
  }
  if (g.ksm_zero_pages != null && g.ksm_zero_pages !== n("ksm_zero")) {
    notes.push({
      kind: "ksm_zero",
      text: `ksm_zero_pages ${count(g.ksm_zero_pages)} vs ${count(n("ksm_zero"))} KSM-placed zero-page cells`,
    });
  }
  return notes;
}

/** Fill every legend's counts from the views' grids (side by side: "left | right"). */
export function showLegendCounts(views) {
  const legend = document.querySelector("ul.legend");
  if (!legend || !views.length || !views.every((v) => v.grid && v.global)) return;
  const cells = views.map((v) => v.grid.kindCounts());
  for (const li of legend.querySelectorAll("li[data-kind]")) {
    const kind = li.dataset.kind;
    let b = li.querySelector("b.count");
    if (!b) {
      b = document.createElement("b");
      b.className = "count";
      li.appendChild(b);
    }
    const text = cells.map((c) => count(c[kind] || 0)).join(" | ");
    if (b.textContent !== text) b.textContent = text;
    b.dataset.counts = JSON.stringify(cells.map((c) => c[kind] || 0));
  }
  const notes = views.flatMap((v, i) =>
    reconcile(cells[i], v.global).map((note) => ({ ...note, text: views.length > 1 ? `${v.kernel}: ${note.text}` : note.text })));
  let box = legend.querySelector("li.legend-notes");
  if (!notes.length) { if (box) box.remove(); return; }
  if (!box) {
    box = document.createElement("li");
    box.className = "legend-notes";
    legend.appendChild(box);
  }
  const text = notes.map((x) => x.text).join("\n");
  if (box.dataset.text !== text) {
    box.dataset.text = text;
    box.replaceChildren(...notes.map((x) => {
      const p = document.createElement("span");
      p.className = `note kind-${x.kind}`;
      p.dataset.kind = x.kind;
      p.textContent = x.text;
      return p;
    }));
  }
}
