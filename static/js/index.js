// The start page: leave empty knob overrides out of the session link.
for (const form of document.querySelectorAll("form.start-form, form.compare-form")) {
  form.addEventListener("submit", () => {
    for (const input of form.querySelectorAll("input[name^='knob.']")) input.disabled = input.value.trim() === "";
    setTimeout(() => { for (const input of form.querySelectorAll("input[name^='knob.']")) input.disabled = false; }, 0);
  });
}
