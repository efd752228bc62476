// ConnectionWatch: the part of a view made of stock ipywidgets (the tool approvals, a
// comparison). After a kernel restart the view stays on the page with no kernel behind
// it: a click on one of its buttons would throw ("Cannot send") and do nothing. The
// widget manager then marks every model not live; this part disables the view's
// buttons, makes its text boxes read-only (what was typed can still be copied) and, if
// anything could be used, says why, as the transcript does.
function render({ model, el }) {
  el.classList.add("cm-connection");
  const notice = document.createElement("div");
  notice.className = "cm-notice";
  el.append(notice);
  let connected = true;
  model.on("comm_live_update", () => {
    if (!connected) return;
    connected = false;
    const view = el.closest(".cm-compare, .cm-approval") || el.parentElement;
    if (!view) return;
    let usable = 0;
    for (const b of view.querySelectorAll("button")) {
      if (!b.disabled) usable += 1;
      b.disabled = true;
    }
    for (const t of view.querySelectorAll("textarea, input")) {
      if (!t.readOnly && !t.disabled) usable += 1;
      t.readOnly = true;
    }
    // Nothing left to use, or a session view, whose chat says so already: no notice.
    if (!usable || el.closest(".cm-session")) return;
    notice.textContent = "Not connected: the kernel restarted. Run the cell again for a live view.";
    notice.style.display = "block";
  });
}

export default { render };
