// Presenter keyboard: space play/pause, right arrow / PageDown step, left arrow / PageUp
// step back, ] / [ next / previous chapter, + / - speed, f fullscreen, p presenter mode, v physical view, t x axis steps / time, 0 fit, ? help.
// A presentation clicker sends PageUp / PageDown, so it steps forward and back.

const KEYS = {
  " ": "toggle",
  ArrowRight: "step",
  PageDown: "step",
  ArrowLeft: "back",
  PageUp: "back",
  "+": "faster",
  "=": "faster",
  "-": "slower",
  _: "slower",
  f: "fullscreen",
  p: "presenter",
  v: "view",
  0: "fit",
  t: "xaxis",
  "]": "nextChapter",
  "[": "previousChapter",
  "?": "help",
  Escape: "close",
};

export function bindKeys(actions) {
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName)) && t.type !== "range") return;
    const action = KEYS[e.key];
    if (!action || !actions[action]) return;
    e.preventDefault();
    actions[action](e);
    document.body.dataset.lastKey = action;
  });
}
