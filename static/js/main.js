// Wiring of the session and compare pages: one SessionView per `.session-view` element,
// one animation loop for all of them, the grid's clicks to the inspector and the event
// form, the presenter keyboard, and the URL kept in step so a shared link reopens here.

import { inspectFrame, inspectPage, inspectProc, refreshInspector } from "./inspector.js";
import { bindKeys } from "./keys.js";
import { bindKnobForm, showKnobs } from "./knob_form.js";
import { showLegendCounts } from "./legend.js";
import { ChapterBar } from "./chapters.js";
import { Overlay, shareAxes } from "./charts.js";
import { SessionView } from "./session_view.js";
import { inspectBucket } from "./overview.js";

const params = new URLSearchParams(location.search);
const body = document.body;
if (params.get("presenter") === "1") body.classList.add("presenter");

const views = [...document.querySelectorAll(".session-view")].map(
  (el) => new SessionView(el, { big: body.classList.contains("presenter") }),
);
const primary = views[0];
// side by side: one y range for both kernels' charts, and their key counters in one figure
shareAxes(views.map((v) => v.charts));
const overlayEl = document.querySelector(".chart-overlay");
const overlay = overlayEl && window.Plotly && views.length > 1
  ? new Overlay(overlayEl, views.map((v) => v.kernel), { big: body.classList.contains("presenter") })
  : null;
if (overlay) views.forEach((v, i) => { if (v.charts) v.charts.tap = overlay.tapOf(i); });
const chapterEl = document.querySelector(".chapter-bar");
const chapters = chapterEl && primary ? new ChapterBar(chapterEl, primary, views) : null;
const state = { fps: 0, frames: 0, drawn: 0, views, overlay, chapters, drawMs: 0, msgMs: 0, messages: 0 };
window.__ksm = state;

// ------------------------------------------------------------------ grid clicks
let selection = null;

function fillSelection() {
  if (!selection) return;
  for (const form of document.querySelectorAll("form.inject-form")) {
    for (const [k, v] of Object.entries(selection)) {
      const input = form.querySelector(`[name="${k}"]`);
      if (input) input.value = v;
    }
    const out = form.querySelector(".selection-text");
    if (out) out.textContent = `${selection.proc} ${selection.vma}[${selection.pages}]`;
  }
}

for (const view of views) {
  const cv = view.grid.canvas;
  cv.addEventListener("pageclick", (e) => {
    for (const v of views) inspectPage(v, e.detail); // side by side: the same page on both
  });
  cv.addEventListener("procclick", (e) => { for (const v of views) inspectProc(v, e.detail.proc); });
  cv.addEventListener("frameclick", (e) => inspectFrame(view, e.detail));
  cv.addEventListener("bucketclick", (e) => inspectBucket(view, e.detail));
  cv.addEventListener("selectionchange", (e) => {
    selection = e.detail;
    for (const v of views) if (v !== view) v.grid.selectPages(e.detail.proc, e.detail.vma, ...pagesRange(e.detail.pages), true);
    fillSelection();
  });
  view.onStep((v, msg) => {
    if (msg.type === "snapshot" || msg.type === "delta") {
      syncTimeline(v);
      if (v === primary) showKnobs(v.knobs);
      scheduleLegend();
      if (v === primary) syncUrl();
      scheduleInspectorRefresh(v);
      // a snapshot fills the view's head (time and money, the sentence): fit the grid again
      if (msg.type === "snapshot" && body.classList.contains("presenter")) requestAnimationFrame(fitPresenterGrid);
    }
    if (msg.type === "state" && v === primary) {
      setPlaying(msg.playing);
      if (!msg.playing) syncUrl();
    }
  });
  connect(view);
}

bindKnobForm();

// ------------------------------------------------------------------ x axis: steps or time
// The charts' x axis: steps, or simulated time (ksmd's batches and sleeps, sim/timemodel.py,
// each step's `story.time_ns`); the choice is remembered in this browser.
const XKEY = "ksmlab.xaxis";
let xmode = "step";
function setXMode(mode) {
  xmode = mode === "time" ? "time" : "step";
  try { localStorage.setItem(XKEY, xmode); } catch (e) { /* private mode: not remembered */ }
  for (const b of document.querySelectorAll(".x-axis-toggle")) {
    b.setAttribute("aria-pressed", String(xmode === "time"));
    b.textContent = xmode === "time" ? "x: simulated time" : "x: steps";
  }
  body.dataset.xaxis = xmode;
  overlay?.setXMode(xmode);
  for (const v of views) v.setXMode(xmode);
}
for (const b of document.querySelectorAll(".x-axis-toggle")) {
  b.addEventListener("click", () => setXMode(xmode === "time" ? "step" : "time"));
}
let savedX = null;
try { savedX = localStorage.getItem(XKEY); } catch (e) { /* no storage */ }
setXMode(savedX);

// the legend's count of cells per kind, against the counters (once per frame at most)
let legendPending = false;
function scheduleLegend() {
  if (legendPending) return;
  legendPending = true;
  requestAnimationFrame(() => { legendPending = false; showLegendCounts(views); });
}

// ------------------------------------------------------------------ websocket
function connect(view) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const token = params.get("token");
  const ws = new WebSocket(`${proto}//${location.host}/ws/sessions/${encodeURIComponent(view.id)}${token ? `?token=${encodeURIComponent(token)}` : ""}`);
  view.ws = ws;
  ws.onopen = () => { view.retry = 0; view._status("live"); };
  ws.onmessage = (ev) => {
    const t0 = performance.now();
    dispatch(view, JSON.parse(ev.data));
    const took = performance.now() - t0;
    state.msgMs += took;
    state.maxMsgMs = Math.max(state.maxMsgMs || 0, took);
    state.messages++;
  };
  ws.onclose = async () => {
    if (view.gone) return;
    view.lostConnection();
    view._status("reconnecting…");
    view.retry = Math.min(view.retry + 1, 6);
    if (await view._isGone()) return;
    setTimeout(() => connect(view), 250 * 2 ** view.retry);
  };
}

/** Every server message type of docs/protocol.md; anything else is a bug. */
function dispatch(view, msg) {
  switch (msg.type) {
    case "snapshot": state.snapshots = (state.snapshots || 0) + 1; view.applySnapshot(msg); break;
    case "delta": view.applyDelta(msg); break;
    case "state": view.applyState(msg); break;
    case "end": view.applyEnd(msg); break;
    case "error": view.showError(msg); break;
    default: throw new Error(`unknown message type ${msg.type}`);
  }
}

function pagesRange(text) {
  const [a, b] = String(text).split("-").map(Number);
  return [a, b ?? a];
}

document.body.addEventListener("htmx:afterSwap", () => { fillSelection(); syncTimeline(primary); });
// an injected event (HX-Trigger from the inject partial) gets a marker on the charts
document.body.addEventListener("ksm:injected", (e) => {
  for (const v of views) v.charts?.mark(e.detail.step, e.detail.op);
});

const refreshTimers = new Map();
function scheduleInspectorRefresh(view) {
  if (refreshTimers.has(view)) return;
  refreshTimers.set(view, setTimeout(() => { refreshTimers.delete(view); refreshInspector(view); }, 400));
}

// ------------------------------------------------------------------ URL and timeline
let urlTimer = null;
let urlSeq = 0;
function syncUrl() {
  if (urlTimer) return;
  urlTimer = setTimeout(async () => {
    urlTimer = null;
    const seq = ++urlSeq;
    let step = primary.step;
    let recipe; // undefined: keep what the URL has
    let doParam; // the compare page's link still carries `do`
    if (primary.id) {
      // every action (an op injected while playing too) is stored on the server as the
      // session's recipe the moment it happens; the link names it: r=<hash>&step=N
      try {
        const r = await fetch(`/api/sessions/${primary.id}/share?step=${primary.step}`);
        if (r.ok) {
          const j = await r.json();
          step = j.step;
          if (location.pathname === "/compare") doParam = j.do;
          else recipe = j.r;
        }
      } catch (_) { /* the link keeps its last recipe */ }
      if (seq !== urlSeq) return; // a newer update is on its way
    }
    // the URL as it is now (a key may have changed it while the request was out)
    const u = new URL(location.href);
    u.searchParams.set("step", String(step));
    if (recipe) {
      u.searchParams.set("r", recipe);
      u.searchParams.delete("do"); // the recipe holds every action
    }
    if (doParam) u.searchParams.set("do", doParam);
    else if (doParam === null) u.searchParams.delete("do");
    history.replaceState(null, "", u);
    const share = document.querySelector(".share-link");
    if (share) {
      // a shared link rebuilds the state from its recipe and step: no live session id, no
      // token
      for (const k of ["sid", "a", "b", "token"]) u.searchParams.delete(k);
      share.href = u.toString();
    }
  }, 300);
}

function syncTimeline(view) {
  if (!view) return;
  for (const slider of document.querySelectorAll("input.timeline")) {
    if (slider.dataset.session && slider.dataset.session !== view.id) continue;
    if (document.activeElement === slider && slider.matches(":active")) continue;
    slider.max = String(Math.max(view.head, view.step));
    slider.value = String(view.step);
    const out = slider.closest("form")?.querySelector(".timeline-out");
    if (out) out.textContent = `${view.step} / ${view.head}`;
  }
}

function setPlaying(playing) {
  body.dataset.playing = String(!!playing);
}

// ------------------------------------------------------------------ keyboard
// Keys post the same request as the buttons, with fetch rather than htmx.ajax: the controls
// partial refreshes itself whenever the session's state changes, and htmx drops a request
// whose source element is swapped out meanwhile, which would lose a clicker press.
function click(action) {
  // not only enabled buttons: the controls partial may still show an older step (a session
  // stepped elsewhere), and a clicker press must never be lost to a stale `disabled`
  const b = document.querySelector(`#controls [data-action="${action}"]`);
  const form = b?.closest("form");
  const url = form?.getAttribute("hx-post");
  if (!b || !url) return false;
  fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "HX-Request": "true", "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ action: b.value }),
  }).then(async (r) => {
    const html = await r.text();
    const current = document.getElementById("controls");
    if (!current || !html.includes('id="controls"')) return;
    current.outerHTML = html;
    const fresh = document.getElementById("controls");
    if (fresh && window.htmx) window.htmx.process(fresh);
  }).catch(() => {});
  return true;
}

function nudgeSpeed(factor) {
  const s = document.querySelector("input.speed");
  if (!s) return;
  const v = Math.min(Number(s.max), Math.max(Number(s.min), Number(s.value) + factor));
  s.value = String(v);
  s.dispatchEvent(new Event("change", { bubbles: true }));
}

const help = document.getElementById("help");
bindKeys({
  toggle: () => click("toggle"),
  step: () => click("step"),
  back: () => click("back"),
  faster: () => nudgeSpeed(1),
  slower: () => nudgeSpeed(-1),
  fullscreen: () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else document.documentElement.requestFullscreen?.().catch(() => {});
    body.dataset.fullscreenRequested = "1";
  },
  presenter: () => {
    const on = body.classList.toggle("presenter");
    for (const v of views) {
      v.charts?.setBig(on);
      v.grid.setBig(on);
    }
    fitPresenterGrid();
    const u = new URL(location.href);
    if (on) u.searchParams.set("presenter", "1"); else u.searchParams.delete("presenter");
    history.replaceState(null, "", u);
  },
  view: () => toggleView(),
  nextChapter: () => chapters?.next(),
  previousChapter: () => chapters?.previous(),
  fit: () => { for (const v of views) v.grid.fit(); },
  xaxis: () => setXMode(xmode === "time" ? "step" : "time"),
  help: () => { if (help) { if (help.open) help.close(); else help.showModal(); } },
  close: () => { if (help?.open) help.close(); },
});

function toggleView(to) {
  for (const v of views) {
    const next = to || (v.grid.view === "virtual" ? "physical" : "virtual");
    v.grid.setView(next);
  }
  for (const b of document.querySelectorAll("[data-view]")) b.setAttribute("aria-pressed", String(b.dataset.view === views[0]?.grid.view));
}
for (const b of document.querySelectorAll("button[data-view]")) b.addEventListener("click", () => toggleView(b.dataset.view));
for (const b of document.querySelectorAll("button[data-zoom]")) {
  b.addEventListener("click", () => {
    for (const v of views) {
      const g = v.grid;
      if (b.dataset.zoom === "fit") g.fit();
      else g.zoomAt(b.dataset.zoom === "in" ? 1.5 : 1 / 1.5, (g.cw + g.gutter) / 2, g.ch / 2);
    }
  });
}
document.querySelector("[data-help]")?.addEventListener("click", () => help?.showModal());

// In presenter mode the grid takes the rest of the screen, whatever sits above it.
function fitPresenterGrid() {
  for (const v of views) {
    const cv = v.grid.canvas;
    if (!body.classList.contains("presenter")) {
      cv.style.height = "";
      const side = v.root.querySelector(".side-panel");
      if (side) side.style.maxHeight = "";
      continue;
    }
    const top = cv.getBoundingClientRect().top + window.scrollY;
    const h = Math.max(240, window.innerHeight - top - 12);
    cv.style.height = `${h}px`;
    // counters and inspector beside the grid, in the same height: both on screen
    const side = v.root.querySelector(".side-panel");
    if (side) side.style.maxHeight = `${h}px`;
  }
}
window.addEventListener("resize", fitPresenterGrid);
fitPresenterGrid();

// ------------------------------------------------------------------ animation loop
let windowStart = performance.now(), windowFrames = 0;
function loop(now) {
  state.frames++;
  windowFrames++;
  if (now - windowStart >= 1000) {
    state.fps = (windowFrames * 1000) / (now - windowStart);
    windowStart = now;
    windowFrames = 0;
  }
  const t0 = performance.now();
  for (const v of views) if (v.frame(now)) state.drawn++;
  overlay?.flush(now);
  const took = performance.now() - t0;
  state.drawMs += took;
  state.maxFrameMs = Math.max(state.maxFrameMs || 0, took);
  requestAnimationFrame(loop);
}
requestAnimationFrame(loop);
