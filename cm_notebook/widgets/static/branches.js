// BranchTree: nodes arrive in tree order with a depth. A click on a name switches
// ({event: "switch"}), fork forks from that branch's last message ({event: "fork"}).
function ago(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

// How often the "N s ago" of the nodes is brought up to date (no message to the kernel).
const AGO_EVERY_MS = 30000;

function render({ model, el }) {
  el.classList.add("cm-tree");
  const list = document.createElement("div");
  list.setAttribute("role", "group");
  list.setAttribute("aria-label", "Branches");
  list.addEventListener("keydown", moveByKey);
  const notice = document.createElement("div");
  notice.className = "cm-notice";
  notice.setAttribute("role", "alert"); // read out as it appears
  el.append(list, notice);

  // Once the kernel restarts, the comm is gone and model.send throws ("Cannot send"):
  // a click on a tree left over from before the restart does nothing instead.
  let connected = true;
  function send(msg) {
    if (!connected) return;
    try {
      model.send(msg);
    } catch (err) {
      disconnected();
    }
  }

  // The arrow keys move between the branches (up, down; Home, End: the first, the
  // last) and between a branch's name and its fork button (left, right). They stop
  // here: in a notebook they would move its cell cursor instead, the focus left behind.
  const MOVES = ["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "Home", "End"];
  function moveByKey(event) {
    const from = event.target.closest("button[data-key]");
    if (!MOVES.includes(event.key) || !from || event.altKey || event.ctrlKey || event.metaKey) {
      return;
    }
    event.preventDefault();
    event.stopPropagation();
    const rows = [...list.querySelectorAll(".cm-node")];
    const row = from.closest(".cm-node");
    const kind = from.classList.contains("cm-fork") ? ".cm-fork" : ".cm-node-name";
    let to = null;
    if (event.key === "ArrowLeft") to = row.querySelector(".cm-node-name");
    else if (event.key === "ArrowRight") to = row.querySelector(".cm-fork");
    else {
      const at = rows.indexOf(row);
      const next = { ArrowUp: at - 1, ArrowDown: at + 1, Home: 0, End: rows.length - 1 };
      const target = rows[next[event.key]];
      to = target ? target.querySelector(kind) : null;
    }
    if (to && !to.disabled) to.focus();
  }

  const metas = []; // for each node, what sets its facts again (their time goes on)
  const metaText = (n) => {
    const busy = n.state !== "Idle" ? ` · ${n.state}` : "";
    let text = `${n.length} msgs · ${ago(n.last)}${busy}`;
    const labels = Object.entries(n.labels || {});
    if (labels.length) {
      // A study's labels (sweep cell, variant, baseline...), small after the facts.
      text += " · " + labels.map(([k, v]) => `${k}=${v}`).join(" ");
    }
    return text;
  };

  // Each change of the nodes draws the tree again (a reply arriving on any branch
  // changes its facts): the button that had the focus, pressed or not, is then drawn
  // anew, and the focus goes to it (the same action of the same branch) instead of
  // falling to the top of the page. Else, its branch gone, to the active branch.
  function draw() {
    const had = document.activeElement;
    const key = had && list.contains(had) ? had.dataset.key : null;
    drawNodes();
    if (!key || document.activeElement === had) return;
    const buttons = [...list.querySelectorAll("button[data-key]")];
    const again = buttons.find((b) => b.dataset.key === key) || list.querySelector(".cm-active .cm-node-name");
    if (again && !again.disabled) again.focus({ preventScroll: true });
  }

  function drawNodes() {
    list.replaceChildren();
    metas.length = 0;
    const parents = []; // the name of the last node drawn at each depth
    for (const n of model.get("nodes") || []) {
      parents[n.depth] = n.name;
      const row = document.createElement("div");
      row.className = "cm-node" + (n.active ? " cm-active" : "");
      row.dataset.branch = n.name;
      row.style.paddingLeft = `${n.depth * 16}px`;
      const mark = document.createElement("span");
      mark.textContent = n.depth ? "└" : "●";
      mark.style.color = "#999";
      mark.setAttribute("aria-hidden", "true"); // drawing, not words
      const name = document.createElement("button");
      name.className = "cm-node-name";
      name.textContent = n.name;
      // The whole name too: a long one is cut with an ellipsis.
      name.title = `${n.name}: ${n.active ? "the active branch" : "switch to this branch"}`;
      name.dataset.key = `switch:${n.name}`;
      if (n.active) name.setAttribute("aria-current", "true");
      // Read after the name: where it hangs in the tree (the drawing says it to the
      // eye only), and its facts.
      const under = n.depth ? `forked from ${parents[n.depth - 1]}; ` : "";
      name.addEventListener("click", () => send({ event: "switch", branch: n.name }));
      const meta = document.createElement("span");
      meta.className = "cm-node-meta";
      const facts = () => {
        meta.textContent = metaText(n);
        name.setAttribute("aria-description", under + meta.textContent);
      };
      facts();
      metas.push(facts);
      const fork = document.createElement("button");
      fork.className = "cm-act cm-fork";
      fork.textContent = "fork";
      fork.title = "new branch from here";
      fork.dataset.key = `fork:${n.name}`;
      // Each fork button says which branch it forks: "fork" alone, read out, does not.
      fork.setAttribute("aria-label", `Fork ${n.name}: new branch from here`);
      fork.addEventListener("click", () => send({ event: "fork", branch: n.name }));
      row.append(mark, name, meta, fork);
      if (n.prompt) {
        const p = document.createElement("div");
        p.className = "cm-node-prompt";
        p.style.paddingLeft = `${n.depth * 16 + 14}px`;
        p.textContent = cutShort(n.prompt, 80);
        p.title = n.prompt;
        list.append(row, p);
      } else {
        list.append(row);
      }
    }
    if (!connected) disable();
  }
  // The times go on without a change of the nodes: only their text is set again.
  const timer = setInterval(() => {
    for (const facts of metas) facts();
  }, AGO_EVERY_MS);

  const disable = () => {
    for (const b of el.querySelectorAll("button")) b.disabled = true;
  };
  // JupyterLab's widget manager marks every model not live when the kernel restarts:
  // the kernel side of this tree is gone. Say so, as the transcript does, and disable
  // the buttons, whose clicks would throw.
  function disconnected() {
    if (!connected) return;
    connected = false;
    // In a session view the chat beside it says so already: once is enough.
    if (!el.closest(".cm-session")) {
      notice.textContent = "Not connected: the kernel restarted. Run the cell again for a live view.";
      notice.style.display = "block";
    }
    disable();
  }
  model.on("comm_live_update", disconnected);

  const drawNotice = () => {
    if (!connected) return;
    notice.textContent = model.get("notice") || "";
    notice.style.display = notice.textContent ? "block" : "none";
  };
  model.on("change:nodes", draw);
  model.on("change:notice", drawNotice);
  draw();
  drawNotice();
  return () => clearInterval(timer);
}

export default { render };
