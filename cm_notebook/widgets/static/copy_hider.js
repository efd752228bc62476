// SavedCopyHider: a live view's saved-notebook copy (static HTML in a separate output
// of the same cell, for viewers without a kernel) repeats the view on a live page, so
// it is hidden there: in this page only, the saved notebook keeps it. A copy that the
// front end puts back (each update replaces the output) is hidden again.
function render({ model, el }) {
  el.classList.add("cm-copy-hider");
  let observer = null;
  let timer = null;
  const selector = () => `[data-cm-copy="${CSS.escape(model.get("copy_id"))}"]`;
  const hide = (area) => {
    for (const copy of area.querySelectorAll(selector())) {
      (copy.closest(".jp-OutputArea-child") || copy).style.display = "none";
    }
  };
  const attach = (tries) => {
    // The view may be drawn before it is placed in the page.
    if (!el.isConnected) {
      if (tries > 0) timer = setTimeout(() => attach(tries - 1), 100);
      return;
    }
    const area = el.closest(".jp-OutputArea") || el.closest(".output_area")?.parentElement;
    if (!area) return;
    hide(area);
    observer = new MutationObserver(() => hide(area));
    observer.observe(area, { childList: true, subtree: true });
  };
  attach(100);
  return () => {
    clearTimeout(timer);
    if (observer) observer.disconnect();
  };
}

export default { render };
