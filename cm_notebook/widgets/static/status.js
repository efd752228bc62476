// StatusBar: one chip per branch. The retry countdown runs here, from `retry_at`
// (epoch ms), so it costs no messages from the kernel.
function fmt(s) {
  if (!s) return "";
  const parts = [];
  if (s.model) parts.push(s.model);
  if (s.output_tokens !== undefined) parts.push(`${s.output_tokens} tokens`);
  if (s.ttft_ms !== undefined) parts.push(`TTFT ${s.ttft_ms} ms`);
  if (s.tokens_per_second !== undefined) parts.push(`${s.tokens_per_second} tok/s`);
  if (s.latency_ms !== undefined) parts.push(`${s.latency_ms} ms`);
  return parts.join(" · ");
}

function render({ model, el }) {
  el.classList.add("cm-status");
  let timer = null;
  // After a kernel restart the states shown are the old kernel's last word (a reply
  // "Streaming" forever): the widget manager marks the model not live, and the chips
  // say so instead.
  let connected = true;

  function draw() {
    el.replaceChildren();
    let counting = false;
    for (const r of model.get("rows") || []) {
      const chip = document.createElement("span");
      chip.className = "cm-chip" + (r.active ? " cm-active" : "");
      // The branch name in <bdi>: a right-to-left name, or an override in one, cannot
      // move or reverse the words after it.
      const name = document.createElement("b");
      name.append(isolated(r.branch), " ");
      const state = document.createElement("span");
      state.className = `cm-state cm-state-${connected ? r.state : "disconnected"}`;
      state.textContent = connected ? r.state : "not connected (kernel restarted)";
      chip.append(name, state);
      if (r.retry_at && connected) {
        const left = Math.max(0, Math.ceil((r.retry_at - Date.now()) / 1000));
        chip.append(` · retry in ${left} s`);
        counting = true;
      }
      const stats = fmt(r.stats);
      if (stats) {
        const meta = document.createElement("span");
        meta.style.color = "var(--jp-ui-font-color2, #777)"; // the theme's, dark ones too
        meta.textContent = " · " + stats;
        chip.append(meta);
      }
      el.append(chip);
      if (r.error && r.state !== "Idle") {
        const err = document.createElement("div");
        err.className = "cm-status-error-text";
        err.append(isolated(r.branch), ": ", isolated(r.error), r.hint ? ` — ${r.hint}` : "");
        el.append(err);
      }
    }
    clearTimeout(timer);
    if (counting) timer = setTimeout(draw, 500);
  }
  model.on("change:rows", draw);
  model.on("comm_live_update", () => {
    connected = false;
    draw();
  });
  draw();
  return () => clearTimeout(timer);
}

export default { render };
