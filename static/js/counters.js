// The counters panel: global sysfs counters and every process's ksm_stat, as a table.
// A pure renderer of the values it is given; "—" where the kernel has no such counter.
// Its rows are the counters of the KSM-files table each snapshot carries (`ksm_files`,
// sim/ksm_files.py), in the table's order, the dimmed ones last.

import { exactValue, formatValue } from "./format.js";

// rows shown dimmed: secondary figures (a style choice, like the colours)
const MINOR = new Set(["pages_scanned", "pages_skipped", "stable_node_chains", "stable_node_dups", "ksm_merge_any"]);

export class Counters {
  constructor(el) {
    this.el = el;
    this.cells = new Map();
    this.procs = "";
    this.global = [];
    this.proc = [];
    this.meaning = new Map();
  }

  /** The rows: the counters of a snapshot's `ksm_files` ([{name, role, place, meaning...}]). */
  setFiles(files) {
    const rows = (place) => {
      const names = files.filter((f) => f.role === "counter" && f.place === place).map((f) => f.name);
      return [...names.filter((n) => !MINOR.has(n)), ...names.filter((n) => MINOR.has(n))];
    };
    const global = rows("sysfs"), proc = rows("ksm_stat");
    if (global.join() === this.global.join() && proc.join() === this.proc.join()) return;
    this.global = global;
    this.proc = proc;
    this.meaning = new Map(files.map((f) => [`${f.place}.${f.name}`, f.meaning]));
    this.unit = new Map(files.map((f) => [`${f.place}.${f.name}`, f.unit]));
    this.table = null;
  }

  update(global, procStats, kernel) {
    if (!this.el) return;
    // highlight changes when stepping by hand; while playing everything changes anyway
    const now = performance.now();
    this.highlight = now - (this.last || 0) > 400;
    this.last = now;
    const names = Object.keys(procStats || {});
    if (!this.table || names.join() !== this.procs) this._build(names, kernel);
    for (const k of this.global) this._set(`g.${k}`, global?.[k], this.unit.get(`sysfs.${k}`));
    for (const p of names) for (const k of this.proc) this._set(`${p}.${k}`, procStats[p]?.[k], this.unit.get(`ksm_stat.${k}`));
  }

  _set(key, v, unit) {
    const td = this.cells.get(key);
    if (!td) return;
    const raw = v === null || v === undefined ? "" : String(v);
    if (td.dataset.value === raw && td.dataset.set) return;
    td.dataset.set = "1";
    td.dataset.value = raw;
    td.title = exactValue(v, unit);
    const text = formatValue(v, unit);
    if (td.textContent !== text) {
      td.textContent = text;
      td.classList.toggle("absent", raw === "");
      // a brief highlight, without forcing a layout
      if (this.highlight) td.animate([{ backgroundColor: "#4d4410" }, { backgroundColor: "transparent" }], { duration: 900, easing: "ease-out" });
    }
  }

  _build(names, kernel) {
    this.procs = names.join();
    this.cells.clear();
    const t = document.createElement("table");
    t.className = "counter-table";
    const row = (label, key, cls, meaning) => {
      const tr = t.insertRow();
      if (cls) tr.className = cls;
      const th = document.createElement("th");
      th.textContent = label;
      th.scope = "row";
      if (meaning) th.title = meaning;
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
    const cls = (k) => (k === "ksm_zero_pages" ? "star" : MINOR.has(k) ? "minor" : "");
    for (const k of this.global) row(k, `g.${k}`, cls(k), this.meaning.get(`sysfs.${k}`));
    for (const p of names) {
      head(`/proc/${p}/ksm_stat`);
      for (const k of this.proc) row(k, `${p}.${k}`, cls(k), this.meaning.get(`ksm_stat.${k}`));
      const last = t.rows[t.rows.length - this.proc.length - 1];
      last.classList.add("proc-head");
      last.dataset.proc = p;
    }
    // the "time and money" figures above the table stay (session_view.js fills them)
    this.el.querySelector("table.counter-table")?.remove();
    this.el.append(t);
    this.table = t;
  }
}
