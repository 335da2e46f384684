// Loaded right after htmx, before the body is drawn: marks the page as enhanced when htmx
// is there, which hides the submit buttons only a page without htmx needs (.no-htmx: the
// controls' sliders and branch list, which htmx sends on change). Without JavaScript, or
// when htmx failed to load, they stay and every form posts to its endpoint as plain HTML.
if (window.htmx) document.documentElement.classList.add("htmx");
