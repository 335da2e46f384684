// The knobs form follows the kernel: on every step, fork, seek and knob write the session's
// websocket brings the knobs (docs/protocol.md `knobs`), and each field that the user has not
// touched shows the new value, with its `was.<name>` companion, so that the server writes
// only the fields the user changed (app/server/pages/partials.py post_knobs).

/** Mark a field as the user's once typed into (a form swapped in by htmx starts clean). */
export function bindKnobForm(root = document) {
  root.addEventListener("input", (e) => {
    const t = e.target;
    if (t instanceof HTMLInputElement && t.dataset.knob) t.dataset.edited = "1";
  });
}

/** Show the kernel's knobs in every untouched field of the knobs form. */
export function showKnobs(knobs) {
  const form = document.getElementById("knobs");
  if (!form || !knobs) return;
  for (const input of form.querySelectorAll("input[data-knob]")) {
    const name = input.dataset.knob;
    if (!(name in knobs) || input.dataset.edited) continue;
    const v = String(knobs[name]);
    const was = form.querySelector(`input[name="was.${CSS.escape(name)}"]`);
    if (was) was.value = v;
    if (input.value !== v && input.getAttribute("aria-invalid") !== "true") input.value = v;
  }
}
