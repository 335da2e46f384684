// The counters panel: global sysfs counters and every process's ksm_stat, as a table.
// A pure renderer of the values it is given; "—" where the kernel has no such counter.

const GLOBAL = [
  "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "ksm_zero_pages",
  "general_profit", "full_scans", "pages_scanned", "pages_skipped", "stable_node_chains", "stable_node_dups",
];
const MINOR = new Set(["pages_scanned", "pages_skipped", "stable_node_chains", "stable_node_dups", "ksm_merge_any"]);
const PROC = ["ksm_rmap_items", "ksm_merging_pages", "ksm_zero_pages", "ksm_process_profit", "ksm_mergeable", "ksm_merge_any"];

function fmt(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "yes" : "no";
  return Number(v).toLocaleString("en-US");
}

export class Counters {
  constructor(el) {
    this.el = el;
    this.cells = new Map();
    this.procs = "";
  }

  update(global, procStats, kernel) {
    if (!this.el) return;
    // highlight changes when stepping by hand; while playing everything changes anyway
    const now = performance.now();
    this.highlight = now - (this.last || 0) > 400;
    this.last = now;
    const names = Object.keys(procStats || {});
    if (!this.table || names.join() !== this.procs) this._build(names, kernel);
    for (const k of GLOBAL) this._set(`g.${k}`, global?.[k]);
    for (const p of names) for (const k of PROC) this._set(`${p}.${k}`, procStats[p]?.[k]);
  }

  _set(key, v) {
    const td = this.cells.get(key);
    if (!td) return;
    const text = fmt(v);
    if (td.textContent !== text) {
      td.textContent = text;
      td.classList.toggle("absent", v === null || v === undefined);
      // a brief highlight, without forcing a layout
      if (this.highlight) td.animate([{ backgroundColor: "#4d4410" }, { backgroundColor: "transparent" }], { duration: 900, easing: "ease-out" });
    }
  }

  _build(names, kernel) {
    this.procs = names.join();
    this.cells.clear();
    const t = document.createElement("table");
    t.className = "counter-table";
    const row = (label, key, cls) => {
      const tr = t.insertRow();
      if (cls) tr.className = cls;
      const th = document.createElement("th");
      th.textContent = label;
      th.scope = "row";
      tr.appendChild(th);
      const td = tr.insertCell();
      td.className = "num";
      td.dataset.counter = key;
      this.cells.set(key, td);
    };
    const head = (text) => {
      const tr = t.insertRow();
      const th = document.createElement("th");
      th.colSpan = 2;
      th.className = "group";
      th.textContent = text;
      tr.appendChild(th);
    };
    head(`/sys/kernel/mm/ksm (${kernel})`);
    for (const k of GLOBAL) row(k, `g.${k}`, k === "ksm_zero_pages" ? "star" : MINOR.has(k) ? "minor" : "");
    for (const p of names) {
      head(`/proc/${p}/ksm_stat`);
      for (const k of PROC) {
        row(k, `${p}.${k}`, k === "ksm_zero_pages" ? "star" : MINOR.has(k) ? "minor" : "");
      }
      const last = t.rows[t.rows.length - PROC.length - 1];
      last.classList.add("proc-head");
      last.dataset.proc = p;
    }
    this.el.replaceChildren(t);
    this.table = t;
  }
}
