// Chapters of the story on the timeline, all of them from the start: the bar spans the
// scenario's steps (the snapshot's `story.steps`), with a mark for every recorded
// checkpoint, op and knob write (the snapshot's `marks`, kept up to date from each step's
// `what`) and, dimmed, every chapter of the scenario not reached yet (the snapshot's
// `chapters`, by scenario step index). A mark sits at its scenario step (`what.step`; an
// injected op or knob write just after the scenario step recorded before it). Clicking a
// recorded mark seeks there; clicking a future one steps forward until the scenario has
// done it; `]` / `[` jump to the next / previous chapter (the next one is computed by
// stepping when it is not recorded yet). The chapters ahead are also counted beside the bar.

const CHAPTER_KINDS = new Set(["op", "checkpoint", "knob"]);
const MAX_STEPS_TO_CHAPTER = 5000;

function isChapter(what) {
  return !!what && CHAPTER_KINDS.has(what.kind);
}

function labelOf(what) {
  if (what.kind === "checkpoint") return what.name || "checkpoint";
  if (what.kind === "knob") return `${what.knob}=${what.value}`;
  const where = what.proc ? ` ${what.proc}${what.vma ? ` ${what.vma}` : ""}` : "";
  return `${what.op || "op"}${where}`;
}

export class ChapterBar {
  constructor(el, view, views = [view]) {
    this.el = el;
    this.view = view;
    this.views = views; // side by side: a step may move only the other pane
    this.marks = []; // [{step, what}] of the viewed branch, in step order
    this.chapters = [];
    this.pending = false;
    el.addEventListener("click", (e) => {
      const b = e.target.closest("button[data-step]");
      if (b) this.seek(Number(b.dataset.step));
      const f = e.target.closest("button[data-at]");
      if (f) this.runTo(Number(f.dataset.at));
    });
    view.onStep((v, msg) => this.onStep(msg));
  }

  onStep(msg) {
    if (msg.type === "snapshot") {
      this.marks = (msg.marks || []).filter((m) => isChapter(m.what));
      this.chapters = msg.chapters || [];
    } else if (msg.type === "delta") {
      if (msg.step === msg.head) this.marks = this.marks.filter((m) => m.step < msg.step); // a new step (or a fork)
      if (isChapter(msg.what) && !this.marks.some((m) => m.step === msg.step)) {
        this.marks.push({ step: msg.step, what: msg.what });
        this.marks.sort((a, b) => a.step - b.step);
      }
    } else return;
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.render(); });
  }

  render() {
    const v = this.view;
    const total = Math.max(1, v.story?.steps ?? 0);
    const left = (at) => `${(100 * Math.min(at + 0.5, total)) / (total + 0.5)}%`;
    // where each recorded mark sits: its scenario step, or just after the one before it
    let prev = -0.5;
    const placed = this.marks.map((m) => {
      const at = Number.isInteger(m.what.step) ? m.what.step : prev + 0.5;
      prev = at;
      return at;
    });
    const recorded = new Set(this.marks.map((m) => m.what.step).filter(Number.isInteger));
    const buttons = this.marks.map((m, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = `chapter chapter-${m.what.kind}`;
      b.dataset.step = String(m.step);
      b.style.left = left(placed[i]);
      const label = labelOf(m.what);
      b.title = `step ${m.step}: ${label}`;
      b.setAttribute("aria-label", b.title);
      if (m.step === v.step) b.setAttribute("aria-current", "step");
      if (m.what.kind === "checkpoint") {
        const s = document.createElement("span");
        s.textContent = label;
        b.append(s);
      }
      return b;
    });
    const pos = v.story?.pos ?? 0;
    // the chapters of the scenario not recorded yet, dimmed: a click steps forward to them
    const future = this.chapters.filter((c) => c.at >= pos && !recorded.has(c.at)).map((c) => {
      const b = document.createElement("button");
      b.type = "button";
      const kind = c.op === "checkpoint" ? "checkpoint" : "op";
      b.className = `chapter chapter-${kind} future`;
      b.dataset.at = String(c.at);
      b.style.left = left(c.at);
      const label = c.name || c.op;
      b.title = `ahead, scenario step ${c.at + 1}: ${label} (click: run forward to it)`;
      b.setAttribute("aria-label", b.title);
      if (kind === "checkpoint") {
        const s = document.createElement("span");
        s.textContent = label;
        b.append(s);
      }
      return b;
    });
    const now = document.createElement("i");
    now.className = "chapter-now";
    now.style.left = left(Math.max(0, pos - 0.5));
    now.title = `scenario step ${pos} / ${v.story?.steps ?? 0}`;
    const track = this.el.querySelector(".chapter-track");
    track.replaceChildren(...future, ...buttons, now);
    const ahead = this.chapters.filter((c) => c.at >= pos).length;
    const out = this.el.querySelector(".chapters-ahead");
    out.textContent = ahead ? `${ahead} ahead in the scenario` : "";
    this.el.dataset.marks = String(this.marks.length);
    this.el.dataset.future = String(future.length);
  }

  seek(step) {
    this.view.send({ type: "seek", step });
  }

  /** The previous chapter before the viewed step (step 0 when there is none). */
  previous() {
    const before = this.marks.filter((m) => m.step < this.view.step);
    this.seek(before.length ? before[before.length - 1].step : 0);
  }

  /** The next recorded chapter, or step forward until one happens (or nothing can). */
  async next() {
    const after = this.marks.find((m) => m.step > this.view.step);
    if (after) return this.seek(after.step);
    if (this.running) return;
    this.running = true;
    try {
      for (let i = 0; i < MAX_STEPS_TO_CHAPTER; i++) {
        const msg = await this._stepOnce();
        if (!msg || msg.type === "end" || isChapter(msg.what)) return;
      }
    } finally {
      this.running = false;
    }
  }

  /** A chapter ahead (scenario step index `at`): seek to it if it is recorded further on
   * this branch, else step forward until the scenario has done it (or nothing can). */
  async runTo(at) {
    const rec = this.marks.find((m) => m.what.step === at && m.step > this.view.step);
    if (rec) return this.seek(rec.step);
    if (this.running) return;
    this.running = true;
    try {
      for (let i = 0; i < MAX_STEPS_TO_CHAPTER; i++) {
        if ((this.view.story?.pos ?? 0) > at) return;
        const msg = await this._stepOnce();
        if (!msg || msg.type === "end") return;
      }
    } finally {
      this.running = false;
    }
  }

  /** One step; resolves with the next message of any pane (null if none comes in time). */
  _stepOnce() {
    return new Promise((resolve) => {
      let done = false;
      const finish = (msg) => { if (!done) { done = true; clearTimeout(timer); resolve(msg); } };
      const timer = setTimeout(() => finish(null), 5000);
      for (const v of this.views) {
        v.onceMessage((msg) => {
          if (msg.type === "delta" || msg.type === "snapshot" || msg.type === "end") { finish(msg); return true; }
          return false;
        });
      }
      this.view.send({ type: "step", n: 1 });
    });
  }
}
