// Live host view: counters chart, sysfs table, derived figures, process table, page map.
// Draws what the server sends (websocket /ws/live, GET /api/live/procs/{pid}/pages); it
// computes no KSM state. Plotly comes from /live/plotly.min.js (a global `Plotly`).

const body = document.body;
const MAX_POINTS = 600;
// "?": KSM or a page left behind copy-on-write by a merge (6.12: no interface tells which)
const COLOURS = { "-": "#e5e7eb", A: "#bfdbfe", Z: "#f59e0b", F: "#9ca3af", "?": "#a855f7" };

const $ = (sel) => document.querySelector(sel);
const fmt = (v) => (v === null || v === undefined ? null : String(v));

function cell(text, cls) {
  const td = document.createElement("td");
  if (text === null) {
    td.textContent = "missing";
    td.className = "missing";
  } else {
    td.textContent = text;
    if (cls) td.className = cls;
  }
  return td;
}

// ---------------------------------------------------------------- status

function setStatus(state, text) {
  const el = $("#live-status");
  el.dataset.state = state;
  el.textContent = text;
}

// ---------------------------------------------------------------- chart

const chart = { traces: null, points: 0 };

function initChart(ksm, files) {
  // every numeric file is a trace; the levels (counters of pages or stable nodes, then of
  // bytes: general_profit) show by default, the others (knobs, running totals) are one
  // legend click away. Which is which comes from the KSM-files table (`files` of a sample).
  const levels = files.filter((f) => f.place === "sysfs" && f.role === "counter" && !f.cumulative);
  const bytes = levels.filter((f) => f.unit === "bytes").map((f) => f.name);
  const shown = [...levels.filter((f) => f.unit !== "bytes").map((f) => f.name), ...bytes];
  const numeric = Object.keys(ksm.values).filter((n) => typeof ksm.values[n] === "number");
  const names = [...shown.filter((n) => numeric.includes(n)),
    ...numeric.filter((n) => !shown.includes(n))];
  chart.traces = names;
  const data = names.map((n) => ({
    x: [], y: [], name: n, mode: "lines", type: "scatter",
    yaxis: bytes.includes(n) ? "y2" : "y",
    visible: shown.includes(n) ? true : "legendonly",
  }));
  const layout = {
    paper_bgcolor: "#0f131a", // the dashboard's theme (static/css/app.css)
    plot_bgcolor: "#0f131a",
    font: { color: "#c9d1d9", family: "system-ui, sans-serif" },
    margin: { t: 30, r: 70, b: 40, l: 60 },
    xaxis: { type: "date", gridcolor: "#273040" },
    yaxis: { title: { text: "pages" }, rangemode: "tozero", gridcolor: "#273040" },
    yaxis2: { title: { text: "bytes" }, overlaying: "y", side: "right", tickformat: ",.0f", rangemode: "tozero" },
    legend: { orientation: "h" },
    title: {
      text: ksm.missing.length ? `missing on this kernel: ${ksm.missing.join(", ")}` : "",
      font: { size: 12 },
    },
  };
  Plotly.newPlot("counters-chart", data, layout, { displaylogo: false, responsive: true });
}

function extendChart(ksm, files) {
  if (!ksm.available) return;
  if (chart.traces === null) initChart(ksm, files || []);
  const t = new Date(ksm.time * 1000);
  const idx = chart.traces.map((_, i) => i);
  const update = {
    x: chart.traces.map(() => [t]),
    y: chart.traces.map((n) => [typeof ksm.values[n] === "number" ? ksm.values[n] : null]),
  };
  Plotly.extendTraces("counters-chart", update, idx, MAX_POINTS);
  chart.points += 1;
  $("#counters-chart").dataset.points = String(chart.points);
}

// ---------------------------------------------------------------- sysfs table, derived

function renderFiles(ksm) {
  const tbody = $("#ksm-files tbody");
  tbody.replaceChildren();
  for (const [name, value] of Object.entries(ksm.values)) {
    const tr = document.createElement("tr");
    tr.dataset.file = name;
    tr.append(cell(name), cell(fmt(value)));
    const kind = name in ksm.errors ? `unreadable: ${ksm.errors[name]}`
      : ksm.knobs.includes(name) ? "knob" : "counter";
    tr.append(cell(kind, "text"));
    tbody.append(tr);
  }
  if (!ksm.available) {
    setStatus("error", "this kernel has no /sys/kernel/mm/ksm (no CONFIG_KSM?)");
  }
}

function renderDerived(ksm) {
  const dl = $("#derived-list");
  dl.replaceChildren();
  for (const d of ksm.derived) {
    const dt = document.createElement("dt");
    const shown = d.value === null ? "n/a"
      : d.unit === "fraction" ? `${(100 * d.value).toFixed(1)} %`
        : `${Number(d.value.toFixed(2))} ${d.unit}`;
    dt.textContent = `${d.name.replaceAll("_", " ")}: ${shown}`;
    dt.dataset.name = d.name;
    const dd = document.createElement("dd");
    dd.textContent = d.explanation;
    dl.append(dt, dd);
  }
}

// ---------------------------------------------------------------- process table

const procs = { rows: [], key: "ksm_merging_pages", dir: "desc", chosen: null };

function compare(a, b) {
  const va = a[procs.key];
  const vb = b[procs.key];
  if (va === vb) return a.pid - b.pid;
  if (va === null) return 1; // missing values last, whatever the direction
  if (vb === null) return -1;
  const order = va < vb ? -1 : 1;
  return procs.dir === "asc" ? order : -order;
}

function renderProcs(table) {
  if (table) {
    procs.rows = table.procs;
    const extra = [];
    if (table.vanished) extra.push(`${table.vanished} exited while read`);
    if (table.unreadable) extra.push(`${table.unreadable} not readable`);
    $("#procs-summary").textContent =
      `(${table.procs.length} of ${table.scanned} processes${extra.length ? "; " + extra.join(", ") : ""})`;
  }
  for (const th of document.querySelectorAll("#procs-table th")) {
    th.dataset.dir = th.dataset.key === procs.key ? procs.dir : "";
  }
  const tbody = $("#procs-table tbody");
  tbody.replaceChildren();
  for (const p of [...procs.rows].sort(compare)) {
    const tr = document.createElement("tr");
    tr.dataset.pid = String(p.pid);
    if (p.pid === procs.chosen) tr.className = "chosen";
    const yes = (v) => (v === null ? null : v ? "yes" : "no");
    tr.append(
      cell(String(p.pid)), cell(p.command, "text"), cell(fmt(p.ksm_rmap_items)),
      cell(fmt(p.ksm_zero_pages)), cell(fmt(p.ksm_merging_pages)),
      cell(fmt(p.ksm_process_profit)), cell(yes(p.mergeable)), cell(yes(p.merge_any)),
    );
    tr.addEventListener("click", () => choose(p.pid));
    tbody.append(tr);
  }
}

for (const th of document.querySelectorAll("#procs-table th")) {
  th.addEventListener("click", () => {
    if (procs.key === th.dataset.key) procs.dir = procs.dir === "asc" ? "desc" : "asc";
    else {
      procs.key = th.dataset.key;
      procs.dir = th.dataset.type === "text" ? "asc" : "desc";
    }
    renderProcs(null);
  });
}

// ---------------------------------------------------------------- page map

function ksmColour(group) {
  // same physical page -> same shade: a hue from a hash of the page frame number
  const h = Math.imul(group ^ (group >>> 16), 0x45d9f3b) >>> 0;
  const hue = h % 360;
  return `hsl(${hue}, 75%, ${34 + ((h >>> 9) % 16)}%)`;
}

function drawPageMap(pm) {
  const canvas = $("#page-map");
  const reason = $("#page-map-reason");
  $("#page-map-title").textContent =
    `(pid ${pm.pid}: ${pm.total_pages} mergeable pages in ${pm.vmas.length} VMAs; ` +
    `pages ${pm.offset}–${pm.offset + pm.limit - 1}, classified by ${pm.classification})`;
  canvas.dataset.cells = pm.cells;
  canvas.dataset.k = String(pm.counts.K || 0);
  canvas.dataset.z = String(pm.counts.Z || 0);
  reason.hidden = pm.available;
  reason.textContent = pm.reason || "";
  const ctx = canvas.getContext("2d");
  if (!pm.available) {
    canvas.height = 20;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    $("#page-map-summary").textContent = "";
    return;
  }
  const group = new Map(pm.groups.map(([i, g]) => [i, g]));
  // cells as big as fit about 400 px of height (3 to 16 px)
  const size = Math.max(3, Math.min(16, Math.floor(Math.sqrt((canvas.width * 400) / Math.max(1, pm.limit)))));
  const cols = Math.floor(canvas.width / size);
  const label = 16;
  // lanes: one per VMA that intersects the window
  const lanes = pm.vmas
    .map((v) => ({ v, lo: Math.max(pm.offset, v.first_page), hi: Math.min(pm.offset + pm.limit, v.first_page + v.pages) }))
    .filter((l) => l.lo < l.hi);
  const height = lanes.reduce((h, l) => h + label + Math.ceil((l.hi - l.lo) / cols) * size + 4, 0);
  canvas.height = Math.max(20, height);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "12px ui-monospace, monospace";
  let y = 0;
  for (const { v, lo, hi } of lanes) {
    ctx.fillStyle = "#374151";
    ctx.fillText(`${v.start}-${v.end} ${v.perms} ${v.name || "[anon]"} ` +
      `(${v.pages} pages${v.ksm_kb === null ? "" : `, smaps KSM: ${v.ksm_kb} kB`})`, 2, y + 12);
    y += label;
    for (let p = lo; p < hi; p++) {
      const i = p - pm.offset;
      const c = pm.cells[i];
      ctx.fillStyle = c === "K" ? ksmColour(group.get(i)) : COLOURS[c] || "#000";
      const k = p - lo;
      ctx.fillRect((k % cols) * size, y + Math.floor(k / cols) * size, size - 1, size - 1);
    }
    y += Math.ceil((hi - lo) / cols) * size + 4;
  }
  const frames = new Set(pm.groups.map(([, g]) => g)).size;
  const c = pm.counts;
  $("#page-map-summary").textContent =
    `${c.K || 0} KSM pages (${frames} physical pages), ${c.Z || 0} zero pages, ` +
    `${c.A || 0} other anonymous, ${c.F || 0} other present, ${c["-"] || 0} not present` +
    (c["?"] ? `, ${c["?"]} KSM or left copy-on-write (?)` : "");
}

async function loadPageMap() {
  const pid = $("#pm-pid").value;
  if (!pid) return;
  const offset = $("#pm-offset").value || 0;
  const limit = $("#pm-limit").value || body.dataset.defaultLimit;
  const res = await fetch(`/api/live/procs/${pid}/pages?offset=${offset}&limit=${limit}`);
  const doc = await res.json();
  if (!res.ok) {
    const reason = $("#page-map-reason");
    reason.hidden = false;
    reason.textContent = typeof doc.detail === "string" ? doc.detail : JSON.stringify(doc.detail);
    return;
  }
  drawPageMap(doc);
}

function choose(pid) {
  procs.chosen = pid;
  $("#pm-pid").value = pid;
  $("#pm-offset").value = 0;
  renderProcs(null);
  loadPageMap();
}

$("#page-map-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  loadPageMap();
});
for (const [id, sign] of [["#pm-prev", -1], ["#pm-next", 1]]) {
  $(id).addEventListener("click", () => {
    const limit = Number($("#pm-limit").value) || Number(body.dataset.defaultLimit);
    const offset = Math.max(0, Number($("#pm-offset").value) + sign * limit);
    $("#pm-offset").value = offset;
    loadPageMap();
  });
}

// ---------------------------------------------------------------- websocket wiring

function onMessage(msg) {
  switch (msg.type) {
    case "sample":
      setStatus("live", `live · ${new Date(msg.ksm.time * 1000).toLocaleTimeString()}`);
      renderFiles(msg.ksm);
      renderDerived(msg.ksm);
      extendChart(msg.ksm, msg.files);
      renderProcs(msg.procs);
      if ($("#pm-follow").checked) loadPageMap();
      break;
    case "error":
      setStatus("error", msg.detail);
      break;
    default:
      throw new Error(`unknown message type ${msg.type}`);
  }
}

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws/live`);
  ws.addEventListener("message", (ev) => onMessage(JSON.parse(ev.data)));
  ws.addEventListener("close", () => {
    setStatus("closed", "disconnected; retrying…");
    setTimeout(connect, 2000);
  });
}

connect();
