// SweepGrid: rows are prompts (and input rows), columns variants, repeats stacked in each
// grid cell. `cells` (the trait) is the whole grid as of its last full update; while the
// sweep runs, custom messages {type: "cells", cells} carry only the cells that changed
// (a growing reply only its added text: `more` after `text_from` characters), applied
// here to a copy. A view says "ready" when it starts, and the kernel answers
// with the whole current grid. Only the repeats whose status or text changed are
// redrawn, so a streaming cell does not flicker the others.
function render({ model, el }) {
  el.classList.add("cm-grid");
  const title = document.createElement("div");
  title.className = "cm-grid-title";
  const table = document.createElement("table");
  table.className = "cm-grid-table";
  const notice = document.createElement("div");
  notice.className = "cm-notice";
  notice.setAttribute("role", "alert"); // read out as it appears
  el.append(title, table, notice);
  let shape = "";
  const slots = new Map(); // sweep cell key -> its element
  let live = new Map(); // sweep cell key -> the cell, the full grid with changes applied
  const takeModel = () => {
    live = new Map((model.get("cells") || []).map((cell) => [cell.key, cell]));
  };

  function build() {
    const rows = model.get("rows") || [];
    const columns = model.get("columns") || [];
    table.replaceChildren();
    slots.clear();
    const head = table.insertRow();
    head.append(document.createElement("th"));
    for (const label of columns) {
      const th = document.createElement("th");
      th.textContent = label;
      head.append(th);
    }
    const places = new Map();
    for (const row of rows) {
      const tr = table.insertRow();
      const th = document.createElement("th");
      th.className = "cm-grid-prompt";
      th.textContent = row.label;
      tr.append(th);
      columns.forEach((_label, col) => {
        const td = tr.insertCell();
        places.set(`${row.key}/${col}`, td);
      });
    }
    for (const cell of live.values()) {
      const slot = document.createElement("div");
      slot.className = "cm-grid-repeat";
      slot.title = cell.branch;
      const place = places.get(`${cell.row}/${cell.col}`);
      if (place) place.append(slot);
      slots.set(cell.key, slot);
    }
  }

  function draw() {
    const cells = Array.from(live.values());
    const now = JSON.stringify([model.get("rows"), model.get("columns"), cells.map((c) => c.key)]);
    if (now !== shape) {
      shape = now;
      build();
    }
    const counts = {};
    for (const cell of cells) {
      counts[cell.status] = (counts[cell.status] || 0) + 1;
      const slot = slots.get(cell.key);
      if (!slot) continue;
      // The status in words, not only in colour; a failed cell's partial text marked,
      // with why (as sweep_grid.shown_text says it). The model's text and the error
      // each in a <bdi>, as in the saved grid: right-to-left text or a direction
      // override in them cannot move or reverse the status words after them.
      const drawn = `${cell.status}\u0000${cell.text}\u0000${cell.error || ""}`;
      if (slot.dataset.drawn === drawn) continue;
      slot.dataset.drawn = drawn;
      slot.className = `cm-grid-repeat cm-grid-${cell.status}`;
      const tag = document.createElement("span");
      tag.className = "cm-grid-tag";
      tag.textContent = `r${cell.repeat} `;
      const parts = [tag];
      if (cell.text) parts.push(isolated(cell.text));
      if (cell.status === "failed") {
        parts.push(cell.text ? " [failed" : "[failed");
        if (cell.error) parts.push(": ", isolated(cell.error));
        parts.push("]");
      } else if (!cell.text) {
        parts.push(`(${cell.status})`);
      } else if (cell.status === "running") {
        parts.push(" [running…]");
      }
      slot.replaceChildren(...parts);
    }
    const shown = Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ");
    title.replaceChildren("sweep ", isolated(model.get("name")), `: ${cells.length} cells (${shown})`);
  }
  const drawNotice = () => {
    notice.textContent = model.get("notice") || "";
    notice.style.display = notice.textContent ? "block" : "none";
  };
  model.on("change:cells", () => {
    takeModel();
    draw();
  });
  model.on("change:rows", draw);
  model.on("change:columns", draw);
  model.on("change:notice", drawNotice);
  const onMessage = (msg) => {
    if (!msg || msg.type !== "cells" || !Array.isArray(msg.cells)) return;
    for (const cell of msg.cells) {
      const before = live.get(cell.key);
      if (!before) continue; // a new key comes with a full grid
      if (cell.more === undefined) {
        live.set(cell.key, cell);
        continue;
      }
      // Only the text added to a growing reply. A view holding other text than it was
      // counted from (it started mid-sweep) skips it: the whole grid is on its way.
      if (before.text.length !== cell.text_from) continue;
      const { more, text_from: _from, ...rest } = cell;
      live.set(cell.key, { ...rest, text: before.text + more });
    }
    draw();
  };
  model.on("msg:custom", onMessage);
  takeModel();
  draw();
  drawNotice();
  model.send({ type: "ready" });
  return () => model.off("msg:custom", onMessage);
}

export default { render };
