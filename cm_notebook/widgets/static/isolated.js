// isolated, shared by status.js and grid.js: each widget's _esm is this text followed
// by its own module (an anywidget module is one text, with nothing to import).

// `text` in a <bdi>: its direction and its controls stay inside it, so right-to-left
// text or a direction override cannot move or reverse the words drawn after it.
function isolated(text) {
  const bdi = document.createElement("bdi");
  bdi.textContent = text;
  return bdi;
}
