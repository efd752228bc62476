// ConnectionWatch: the part of a view made of stock ipywidgets (the tool approvals, a
// comparison). After a kernel restart the view stays on the page with no kernel behind
// it: a click on one of its buttons would throw ("Cannot send") and do nothing. The
// widget manager then marks every model not live; this part disables the view's
// buttons, makes its text boxes read-only (what was typed can still be copied) and, if
// anything could be used, says why, as the transcript does.
//
// It also gives the view what stock widgets cannot say to a screen reader, from what
// the kernel sets on them (see `accessible` below), and keeps the focus in the view
// when the kernel disables the control that had it.

// The view's parts, marked by the kernel with classes (stock widgets take no ARIA):
// - `.cm-announce`: read out when its text changes (a tool call waiting for approval);
// - `.cm-rating` (a bar of rating buttons): a group, named by its `.cm-rating-name`
//   (which answer it rates); its buttons named by their tooltips, not by their icon's glyph,
//   and pressed (`aria-pressed`) when they have the class `cm-pressed`.
function accessible(view) {
  for (const part of view.querySelectorAll(".cm-announce")) {
    if (part.getAttribute("role") !== "status") part.setAttribute("role", "status");
  }
  for (const bar of view.querySelectorAll(".cm-rating")) {
    bar.setAttribute("role", "group");
    const name = bar.querySelector(".cm-rating-name");
    if (name) {
      bar.setAttribute("aria-label", name.textContent);
      name.setAttribute("aria-hidden", "true"); // said once, as the group's name
    }
    for (const b of bar.querySelectorAll("button")) {
      if (b.title) b.setAttribute("aria-label", b.title);
      b.setAttribute("aria-pressed", b.classList.contains("cm-pressed") ? "true" : "false");
      for (const glyph of b.querySelectorAll("i")) glyph.setAttribute("aria-hidden", "true");
    }
  }
}

// Where the focus goes when the control that had it is disabled (a decided tool call's
// row): the next call's Approve, else the message box of the session's chat.
function nextFocus(view) {
  const approve = view.querySelector(".cm-approve:not(:disabled)");
  if (approve) return approve;
  const session = view.closest(".cm-session");
  return session && session.querySelector(".cm-message-box textarea");
}

function render({ model, el }) {
  el.classList.add("cm-connection");
  const notice = document.createElement("div");
  notice.className = "cm-notice";
  notice.setAttribute("role", "alert");
  el.append(notice);
  let connected = true;
  const viewOf = () => el.closest(".cm-compare, .cm-approval") || el.parentElement;

  // Watched once this part is on the page (the view draws its parts, then puts them in).
  const watch = new MutationObserver((changes) => {
    const view = viewOf();
    if (!view) return;
    for (const { target, attributeName } of changes) {
      if (attributeName === "disabled" && connected && target.disabled && target === document.activeElement) {
        const next = nextFocus(view);
        if (next) next.focus({ preventScroll: true });
      }
    }
    accessible(view);
  });
  let tries = 0;
  function start() {
    const view = el.isConnected && viewOf();
    if (!view) {
      if (tries++ < 100) setTimeout(start, 100);
      return;
    }
    accessible(view);
    watch.observe(view, {
      subtree: true,
      childList: true,
      attributes: true,
      characterData: true,
      attributeFilter: ["disabled", "class", "title"],
    });
  }
  start();

  model.on("comm_live_update", () => {
    if (!connected) return;
    connected = false;
    const view = viewOf();
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
  return () => watch.disconnect();
}

export default { render };
