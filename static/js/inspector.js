// The inspector panel: server-rendered partials (htmx) for a page or a process; a frame
// clicked in the physical view is described from what the grid was sent (its kind's label
// from the snapshot's `kind_table`).

function url(view, path) {
  const token = new URLSearchParams(location.search).get("token");
  return `/ui/sessions/${encodeURIComponent(view.id)}/${path}${token ? `?token=${encodeURIComponent(token)}` : ""}`;
}

function target(view) {
  return view.root.querySelector(".inspector") || document.querySelector(".inspector");
}

export function inspectPage(view, { proc, vma, page }) {
  const el = target(view);
  if (!el || !window.htmx) return;
  el.dataset.selected = `${proc}/${vma}/${page}`;
  window.htmx.ajax("GET", url(view, `pages/${encodeURIComponent(proc)}/${encodeURIComponent(vma)}/${page}`), { target: el, swap: "innerHTML" });
}

export function inspectProc(view, proc) {
  const el = target(view);
  if (!el || !window.htmx) return;
  el.dataset.selected = proc;
  window.htmx.ajax("GET", url(view, `procs/${encodeURIComponent(proc)}`), { target: el, swap: "innerHTML" });
}

export function inspectFrame(view, { pfn, kind, mapcount }) {
  const el = target(view);
  if (!el) return;
  el.dataset.selected = `pfn ${pfn}`;
  const h = document.createElement("h3");
  h.textContent = `frame pfn ${pfn}`;
  const dl = document.createElement("dl");
  const label = view.kindTable?.frames.find((f) => f.id === kind)?.label ?? kind;
  for (const [k, v] of [["kind", label], ["PTEs mapping it (map count)", mapcount]]) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = String(v);
    dl.append(dt, dd);
  }
  el.replaceChildren(h, dl);
}

/** Re-fetch what the inspector shows after a step (same page, new state). */
export function refreshInspector(view) {
  const el = target(view);
  const sel = el?.dataset.selected;
  if (!sel || sel.startsWith("pfn")) return;
  const parts = sel.split("/");
  if (parts.length === 3) inspectPage(view, { proc: parts[0], vma: parts[1], page: Number(parts[2]) });
  else inspectProc(view, sel);
}
