// BranchTree: nodes arrive in tree order with a depth. A click on a name switches
// ({event: "switch"}), fork forks from that branch's last message ({event: "fork"}).
function ago(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function render({ model, el }) {
  el.classList.add("cm-tree");
  const list = document.createElement("div");
  const notice = document.createElement("div");
  notice.className = "cm-notice";
  el.append(list, notice);

  function draw() {
    list.replaceChildren();
    for (const n of model.get("nodes") || []) {
      const row = document.createElement("div");
      row.className = "cm-node" + (n.active ? " cm-active" : "");
      row.dataset.branch = n.name;
      row.style.paddingLeft = `${n.depth * 16}px`;
      const mark = document.createElement("span");
      mark.textContent = n.depth ? "└" : "●";
      mark.style.color = "#999";
      const name = document.createElement("button");
      name.className = "cm-node-name";
      name.textContent = n.name;
      // The whole name too: a long one is cut with an ellipsis.
      name.title = `${n.name}: ${n.active ? "the active branch" : "switch to this branch"}`;
      name.addEventListener("click", () => model.send({ event: "switch", branch: n.name }));
      const meta = document.createElement("span");
      meta.className = "cm-node-meta";
      const busy = n.state !== "Idle" ? ` · ${n.state}` : "";
      meta.textContent = `${n.length} msgs · ${ago(n.last)}${busy}`;
      const labels = Object.entries(n.labels || {});
      if (labels.length) {
        // A study's labels (sweep cell, variant, baseline...), small after the facts.
        meta.textContent += " · " + labels.map(([k, v]) => `${k}=${v}`).join(" ");
      }
      const fork = document.createElement("button");
      fork.className = "cm-act cm-fork";
      fork.textContent = "fork";
      fork.title = "new branch from here";
      fork.addEventListener("click", () => model.send({ event: "fork", branch: n.name }));
      row.append(mark, name, meta, fork);
      if (n.prompt) {
        const p = document.createElement("div");
        p.className = "cm-node-prompt";
        p.style.paddingLeft = `${n.depth * 16 + 14}px`;
        p.textContent = n.prompt.length > 80 ? n.prompt.slice(0, 79) + "…" : n.prompt;
        p.title = n.prompt;
        list.append(row, p);
      } else {
        list.append(row);
      }
    }
  }
  const drawNotice = () => {
    notice.textContent = model.get("notice") || "";
    notice.style.display = notice.textContent ? "block" : "none";
  };
  model.on("change:nodes", draw);
  model.on("change:notice", drawNotice);
  draw();
  drawNotice();
}

export default { render };
