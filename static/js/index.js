// The start page: leave empty knob overrides out of the session link.
for (const form of document.querySelectorAll("form.start-form, form.compare-form")) {
  form.addEventListener("submit", () => {
    for (const input of form.querySelectorAll("input[name^='knob.']")) input.disabled = input.value.trim() === "";
    setTimeout(() => { for (const input of form.querySelectorAll("input[name^='knob.']")) input.disabled = false; }, 0);
  });
}

// The upload form: a warning about unknown knob names (and its "open it anyway") belongs to
// the file it was about; another file is checked again.
document.querySelector("#upload")?.addEventListener("change", (e) => {
  if (e.target.matches("input[type=file]")) e.target.form.querySelector(".upload-result")?.replaceChildren();
});
