// The transcript of a ChatView. State: the synced traits `frozen` (references to one
// model per finished message, its `data` rendered by the kernel; a model is sent once
// and again only when that message changes), `last_reply` and `live` ({id} of the
// streaming reply). Fast path: custom
// messages {kind: "delta", id, offset, text} appended when `offset` matches the text
// held here (both in UTF-16 code units: the kernel counts as `text.length` does); on
// any mismatch (rendered late, missed a delta) ask for the whole live text
// ({event: "pull"}) and wait for {kind: "snapshot"}, which the kernel sends only after
// `live` names its message. A thinking model's reasoning comes the same way, as
// {kind: "reasoning", id, offset, text} (and `reasoning` in the snapshot), into a
// collapsed "Thinking…" section of the live reply.

function h(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

// `name`: what a screen reader says for a glyph (✎, ↻, <): the glyph itself means
// nothing read aloud. `key`: the action, with the message's id, by which focus finds
// the button drawn again in its place (see keepingFocus).
function button(label, title, onClick, cls, name, key) {
  const b = h("button", "cm-act" + (cls ? " " + cls : ""), label);
  b.title = title;
  if (name) b.setAttribute("aria-label", name);
  if (key) b.dataset.key = key;
  b.addEventListener("click", (e) => {
    e.preventDefault();
    onClick();
  });
  return b;
}

function statsLine(s) {
  if (!s) return "";
  const parts = [];
  if (s.model) parts.push(s.model);
  if (s.output_tokens !== undefined) parts.push(`${s.input_tokens ?? "?"}→${s.output_tokens} tokens`);
  if (s.ttft_ms !== undefined) parts.push(`TTFT ${s.ttft_ms} ms`);
  if (s.tokens_per_second !== undefined) parts.push(`${s.tokens_per_second} tok/s`);
  if (s.latency_ms !== undefined) parts.push(`${s.latency_ms} ms`);
  return parts.join(" · ");
}

function renderCall(c) {
  const box = h("div", `cm-call cm-call-${c.status}`);
  const head = h("div", "cm-call-head");
  head.append(h("span", "cm-call-name", `⚙ ${c.name}`), h("span", "cm-badge", c.status));
  box.append(head, h("pre", "cm-call-args", c.args));
  if (c.reason) box.append(h("div", "cm-call-reason", c.reason));
  if (c.result) box.append(h("div", "cm-call-result", `→ ${c.result}`));
  return box;
}

// Thumbs up, thumbs down and 1-5 under an assistant message; the pressed ones show its
// stored rating. The thumbs are Font Awesome icons, as on the notebook's other buttons
// (Send, Approve): an emoji needs a color-emoji font, which many Linux machines lack.
function ratingBar(m, send) {
  const bar = h("div", "cm-rating");
  const rating = m.rating || {};
  const add = (label, title, pressed, payload, icon, name) => {
    const key = `${m.id}:rate:${payload.thumbs || payload.score}`;
    const b = button(label, title, () => send({ event: "rate", id: m.id, ...payload }), "cm-rate", name || title, key);
    if (icon) {
      const glyph = h("i", `fa fa-${icon}`);
      glyph.setAttribute("aria-hidden", "true");
      b.append(glyph);
    }
    if (pressed) b.classList.add("cm-pressed");
    b.setAttribute("aria-pressed", pressed ? "true" : "false");
    bar.append(b);
  };
  add("", "a good answer", rating.thumbs === "up", { thumbs: "up" }, "thumbs-up");
  add("", "a bad answer", rating.thumbs === "down", { thumbs: "down" }, "thumbs-down");
  for (let n = 1; n <= 5; n++) {
    add(String(n), `score ${n} of 5`, rating.score === n, { score: n }, null, `Score ${n} of 5`);
  }
  return bar;
}

function render({ model, el }) {
  el.classList.add("cm-transcript");
  const scroller = h("div", "cm-scroll");
  const list = h("div", "cm-messages");
  const liveBox = h("div", "cm-msg cm-assistant cm-live");
  const liveText = h("div", "cm-live-text");
  const liveHead = h("div", "cm-head");
  liveHead.append(h("span", "cm-label", "Assistant ▍"));
  // The reasoning as it arrives: collapsed, as the finished reply's is, and shown only
  // once there is some. Plain text (appended as it comes): the kernel renders it once
  // the reply is finished.
  const liveThought = h("details", "cm-reasoning cm-live-reasoning");
  const liveThoughtText = h("div", "cm-live-reasoning-text");
  liveThought.append(h("summary", "", "Thinking…"), liveThoughtText);
  liveThought.style.display = "none";
  liveBox.append(liveHead, liveThought, liveText);
  const notice = h("div", "cm-notice");
  // Read out by screen readers as it appears: an action's error, "Not connected".
  notice.setAttribute("role", "alert");
  // Says each finished reply once, politely: the streaming text is not a live region
  // (a screen reader would read every delta as it came).
  const announcer = h("div", "cm-sr-only");
  announcer.setAttribute("role", "status");
  announcer.setAttribute("aria-live", "polite");
  // Only the branch's last messages are sent at first (`earlier`: how many more there
  // are): a click asks the kernel for more, drawn above without moving what is read.
  const earlier = button("", "show earlier messages of this branch", () => {
    if (send({ event: "earlier", branch: model.get("branch") })) keepFromBottom = true;
  }, "cm-earlier");
  let keepFromBottom = false;
  scroller.append(earlier, list);
  el.append(scroller, notice, announcer);

  // Once the kernel restarts, the comm is gone and model.send throws ("Cannot send");
  // a click on a view left over from before the restart does nothing instead.
  let connected = true;
  // True if the message went to the kernel.
  function send(msg) {
    if (!connected) return false;
    try {
      model.send(msg);
      return true;
    } catch (err) {
      disconnected();
      return false;
    }
  }

  let liveId = null;
  let text = "";
  let thought = ""; // the live reply's reasoning, as held here
  let pulling = false;
  // Replies whose reasoning the reader opened: it stays open once they are finished
  // and whenever their box is drawn again.
  const keptOpen = new Set();
  liveThought.addEventListener("toggle", () => {
    if (!liveId) return;
    if (liveThought.open) keptOpen.add(liveId);
    else keptOpen.delete(liveId);
  });
  function showThought(value) {
    thought = value;
    liveThoughtText.textContent = value;
    liveThought.style.display = value ? "" : "none";
  }

  const atBottom = () => scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  // Whether the view follows the end of the transcript. Only the reader's own scrolling
  // changes it: boxes grow after they are drawn (a tool call's result, its badge, a
  // reply's stats and rating bar), and a view that asked "at the bottom?" after each
  // change fell a few pixels behind each time, until past the tolerance it stopped
  // following for good. Growth never moves scrollTop, so a scroll up from where the
  // view last was is the reader's; reaching the bottom, by any means, follows again.
  let stuck = true;
  let lastTop = 0;
  // Not laid out (a hidden tab or cell): nothing to measure; the ResizeObserver below
  // calls follow() once it is shown.
  const laidOut = () => scroller.clientHeight > 0;
  function noteScroll() {
    if (!laidOut()) return;
    const top = scroller.scrollTop;
    if (atBottom()) stuck = true;
    else if (top < lastTop - 1) stuck = false;
    lastTop = top;
  }
  // After any change of the content's size: back to the bottom if following. A scroll
  // not yet reported by its event (it comes a frame later) is taken into account first,
  // so a reply streaming in does not undo it.
  function follow() {
    noteScroll();
    if (!laidOut()) return;
    if (stuck) scroller.scrollTop = scroller.scrollHeight;
    lastTop = scroller.scrollTop;
  }
  scroller.addEventListener("scroll", noteScroll, { passive: true });
  // Any growth or shrinking, whatever drew it; and the scroller's own size (shown again
  // after being hidden, the window resized).
  const resized = new ResizeObserver(follow);
  resized.observe(list);
  resized.observe(scroller);

  function pull() {
    if (!pulling) {
      pulling = true;
      send({ event: "pull" });
    }
  }

  // Finished messages: one model each, resolved once, one element each.
  const models = new Map(); // model id -> Promise of the message's model
  const boxes = new Map(); // model id -> {model, box}
  let drawing = 0;

  function resolve(ref) {
    const id = ref.replace(/^IPY_MODEL_/, "");
    if (!models.has(id)) models.set(id, model.widget_manager.get_model(id));
    return models.get(id).then((m) => [id, m]);
  }

  // Open edit boxes: message id -> the text typed so far. Messages are redrawn often
  // (a new reply anywhere on the branch moves ↻, a tool call changes status), and a
  // redraw draws the edit box again from here, so nothing typed is lost.
  const editing = new Map();

  // Replacing or moving a message box drops the focus of whatever in it had it (a
  // button pressed with the keyboard, the edit box being typed into: its caret too),
  // and the next Tab would start again from the top of the page. Focus goes back to
  // the control drawn in its place (same message, same action); else to the same
  // action of the message now at that place (an alternative shown by < or >); else,
  // if the control went (↻ replaced its reply, an edit was sent), to the chat's
  // message box.
  function keepingFocus(draw) {
    const had = document.activeElement;
    if (!had || !list.contains(had)) return draw();
    const box = had.closest(".cm-msg");
    const place = box ? [...list.children].indexOf(box) : -1;
    const key = had.dataset.key || (had.classList.contains("cm-edit-box") && box ? `${box.dataset.id}:edit-box` : null);
    const action = key && key.slice(key.indexOf(":") + 1);
    const caret = had.classList.contains("cm-edit-box") && [had.selectionStart, had.selectionEnd];
    draw();
    if (document.activeElement === had && had.isConnected) return;
    const byKey = (root, k) => root && [...root.querySelectorAll("[data-key]")].find((b) => b.dataset.key === k);
    let again = key && byKey(list, key);
    if (!again && key && key.endsWith(":edit-box")) {
      again = list.querySelector(`.cm-msg[data-id="${CSS.escape(box.dataset.id)}"] .cm-edit-box`);
    }
    if (!again && key && action.startsWith("edit-")) again = byKey(list, `${box.dataset.id}:edit`);
    if (!again && action && place >= 0) {
      const there = list.children[place];
      again = there && [...there.querySelectorAll("[data-key]")].find((b) => b.dataset.key.endsWith(`:${action}`));
    }
    // Disabled (> on the last alternative): another control of that message.
    if (again && again.disabled) again = again.closest(".cm-msg").querySelector("button[data-key]:not(:disabled)");
    if (!again) again = messageBox();
    if (!again || !again.isConnected) return;
    again.focus({ preventScroll: true });
    if (caret && again.classList.contains("cm-edit-box")) again.setSelectionRange(...caret);
  }

  // The text box of the ChatView holding this transcript (none shown on its own).
  const messageBox = () => {
    const chat = el.closest(".cm-chat");
    return chat && chat.querySelector(".cm-message-box textarea");
  };

  function redraw(entry) {
    keepingFocus(() => {
      const fresh = renderMessage(entry.model.get("data"));
      entry.box.replaceWith(fresh);
      entry.box = fresh;
    });
  }

  function boxOf(id, m) {
    let entry = boxes.get(id);
    if (!entry) {
      entry = { model: m, box: renderMessage(m.get("data")) };
      boxes.set(id, entry);
      // Only this message is redrawn when it changes (a tool call's status, siblings).
      // The new box may be taller (a tool call's result, stats, a rating bar).
      m.on("change:data", () => {
        redraw(entry);
        follow();
      });
    }
    return entry.box;
  }

  async function drawMessages() {
    const token = ++drawing;
    const resolved = await Promise.all((model.get("frozen") || []).map(resolve));
    if (token !== drawing) return; // a newer list arrived meanwhile
    noteScroll(); // measured with a finished reply's live box still there
    const fromBottom = scroller.scrollHeight - scroller.scrollTop;
    const wanted = resolved.map(([id, m]) => boxOf(id, m));
    keepingFocus(() => placeBoxes(liveId ? [...wanted, liveBox] : wanted));
    announceFinished();
    drawEarlier();
    if (keepFromBottom && !stuck && laidOut()) {
      // Earlier messages came in above: the one being read stays where it was.
      scroller.scrollTop = scroller.scrollHeight - fromBottom;
      lastTop = scroller.scrollTop;
    }
    keepFromBottom = false;
    follow();
  }

  // The boxes in order, leaving in place those already there: a box taken out of the
  // page, even to be put back at once, loses the focus of a control in it (a reply
  // arriving would take it from the button or edit box in use).
  function placeBoxes(wanted) {
    const keep = new Set(wanted);
    for (const child of [...list.children]) if (!keep.has(child)) child.remove();
    let at = list.firstChild;
    for (const box of wanted) {
      if (box === at) at = at.nextSibling;
      else list.insertBefore(box, at);
    }
  }

  // The reply that just finished streaming, said once by the live region (its text,
  // as drawn), when its finished box is on the page. A reply that only asks for tools
  // says nothing here: the approvals, or its tool calls' results, follow.
  let finishing = null;
  const announced = new Set();
  function announceFinished() {
    if (!finishing) return;
    const box = [...list.children].find((b) => b.dataset.id === finishing);
    if (!box) return;
    const id = finishing;
    finishing = null;
    if (announced.has(id)) return;
    announced.add(id);
    const body = box.querySelector(".cm-body");
    const error = box.querySelector(".cm-error");
    let said = (body ? body.textContent : "").trim();
    said = cutShort(said, 600);
    if (box.classList.contains("cm-status-interrupted")) announcer.textContent = `Reply stopped: ${said}`;
    else if (error) announcer.textContent = `Reply failed: ${error.textContent}`;
    else if (said) announcer.textContent = `Reply finished: ${said}`;
  }

  function drawEarlier() {
    const hidden = model.get("earlier") || 0;
    earlier.textContent = `Show earlier messages (${hidden} more)`;
    earlier.style.display = hidden > 0 ? "block" : "none";
  }

  function redrawAll() {
    for (const entry of boxes.values()) redraw(entry);
    follow();
  }

  function renderMessage(m) {
    const box = h("div", `cm-msg cm-${m.role} cm-status-${m.status}`);
    box.dataset.id = m.id;
    const key = (action) => `${m.id}:${action}`;
    const head = h("div", "cm-head");
    head.append(h("span", "cm-label", m.label));
    if (m.sibling) {
      const nav = h("span", "cm-siblings");
      const prev = button("<", "previous alternative", () => send({ event: "sibling", id: m.prev }), "", "Previous alternative", key("prev"));
      const next = button(">", "next alternative", () => send({ event: "sibling", id: m.next }), "", "Next alternative", key("next"));
      prev.disabled = !m.prev;
      next.disabled = !m.next;
      nav.append(prev, h("span", "cm-sibling-pos", `${m.sibling[0]}/${m.sibling[1]}`), next);
      head.append(nav);
    }
    const actions = h("span", "cm-actions");
    const body = h("div", "cm-body");
    body.innerHTML = m.html; // rendered by the kernel; raw HTML in messages is escaped there
    if (m.role === "user") {
      actions.append(button("✎", "edit and resend (on a new branch)", () => startEdit(m, body), "cm-edit", "Edit this message", key("edit")));
    }
    if (m.id === model.get("last_reply")) {
      actions.append(button("↻", "regenerate this reply", () => send({ event: "regenerate", id: m.id, branch: model.get("branch") }), "cm-regenerate", "Regenerate this reply", key("regenerate")));
    }
    if (m.role === "user" || m.role === "assistant") {
      actions.append(button("fork", "new branch from here", () => send({ event: "fork", id: m.id, branch: model.get("branch") }), "cm-fork", "Fork: new branch from here", key("fork")));
    }
    head.append(actions);
    box.append(head);
    if (m.reasoning) {
      // The reasoning, collapsed, before the answer (rendered and escaped by the kernel).
      const reasoning = h("div", "cm-reasoning-box");
      reasoning.innerHTML = m.reasoning;
      const details = reasoning.querySelector("details");
      if (details) {
        details.open = keptOpen.has(m.id);
        details.addEventListener("toggle", () => {
          if (details.open) keptOpen.add(m.id);
          else keptOpen.delete(m.id);
        });
      }
      box.append(reasoning);
    }
    box.append(body);
    if (editing.has(m.id)) startEdit(m, body);
    for (const c of m.calls || []) box.append(renderCall(c));
    if (m.error) box.append(h("div", "cm-error", m.error));
    if (m.hint) box.append(h("div", "cm-hint", m.hint));
    const stats = statsLine(m.stats);
    if (stats) box.append(h("div", "cm-stats", stats));
    if (m.rating) box.append(ratingBar(m, (msg) => send(msg)));
    if (!connected) disable(box); // drawn after a restart: as dead as the rest
    return box;
  }

  function startEdit(m, body) {
    const opening = !editing.has(m.id);
    if (opening) editing.set(m.id, m.text);
    const area = h("textarea", "cm-edit-box");
    area.setAttribute("aria-label", "Edited message");
    area.value = editing.get(m.id);
    area.addEventListener("input", () => editing.set(m.id, area.value));
    // Keys typed here are the box's, never the notebook's: JupyterLab would run the
    // cell on Shift+Enter, and once the box is read-only (the kernel restarted) take
    // "d d", "x", "a", "b", "m" as commands on the cell holding this view.
    area.addEventListener("keydown", (event) => event.stopPropagation());
    const close = () => {
      editing.delete(m.id);
      redrawAll();
    };
    const row = h("div", "cm-edit-row");
    row.append(
      button("Send edit", "resend on a new branch", () => {
        if (!area.value.trim()) return area.focus(); // nothing to send: the box stays
        // Closed once sent (the edited message opens on its new branch); kept, with
        // its text, if the kernel could not be reached.
        if (send({ event: "edit", id: m.id, text: area.value, branch: model.get("branch") })) close();
      }, "cm-edit-send", null, `${m.id}:edit-send`),
      button("Cancel", "keep the message", close, "", null, `${m.id}:edit-cancel`),
    );
    body.replaceChildren(area, row);
    if (opening) area.focus();
  }

  function drawLive(initial) {
    const live = model.get("live") || {};
    if (!live.id) {
      if (liveId) finishing = liveId;
      liveId = null;
      text = "";
      thought = "";
      // The live box goes when drawMessages puts the finished message in its place:
      // removed now, the list would shrink, clamping the scroll to the bottom, and
      // drawMessages would take a reader who scrolled up for one following the reply.
      drawMessages();
      return;
    }
    if (live.id !== liveId) {
      liveId = live.id;
      text = "";
      liveText.textContent = "";
      showThought("");
      liveThought.open = keptOpen.has(liveId);
      list.append(liveBox);
      // A view that renders late missed the deltas so far: pull them.
      if (initial) pull();
    }
  }

  model.on("msg:custom", (msg) => {
    if (msg.kind === "snapshot") {
      pulling = false;
      if (msg.id !== liveId) return;
      text = msg.text;
      liveText.textContent = text;
      showThought(msg.reasoning || "");
      follow();
    } else if (msg.kind === "delta") {
      if (msg.id !== liveId || msg.offset !== text.length) {
        pull();
        return;
      }
      text += msg.text;
      liveText.append(msg.text);
      follow();
    } else if (msg.kind === "reasoning") {
      if (msg.id !== liveId || msg.offset !== thought.length) {
        pull();
        return;
      }
      if (!thought) liveThought.style.display = "";
      thought += msg.text;
      liveThoughtText.append(msg.text);
      follow();
    }
  });

  // Buttons disabled; text boxes read-only, so what was typed can still be copied.
  function disable(root) {
    for (const b of root.querySelectorAll("button")) b.disabled = true;
    for (const t of root.querySelectorAll("textarea")) t.readOnly = true;
  }

  // JupyterLab's widget manager marks every model not live when the kernel restarts
  // (not after a crash's automatic restart: that is noticed when a click finds no
  // kernel): the kernel side of this view is gone. Say so, drop the streaming marker
  // (that reply will never end here) and disable the view's buttons, the stock Send /
  // Stop of its ChatView too, whose clicks would throw.
  function disconnected() {
    if (!connected) return;
    connected = false;
    liveId = null;
    liveHead.firstChild.textContent = "Assistant (cut off)";
    liveBox.classList.remove("cm-live");
    notice.textContent = "Not connected: the kernel restarted. Run the cell again for a live view.";
    notice.style.display = "block";
    disable(el.closest(".cm-chat") || el);
  }
  model.on("comm_live_update", disconnected);

  // The chat's Send and Stop are disabled by the kernel while they cannot be used (Send
  // once it sent, Stop once the reply ended): a disabled button loses the focus, to the
  // top of the page. A button disabled while it had the focus hands it to the message
  // box, where the next message is typed. Watched once the view is on the page (its
  // ChatView draws it first, the buttons after).
  const buttonsWatch = new MutationObserver((changes) => {
    for (const { target } of changes) {
      if (connected && target.disabled && target === document.activeElement) {
        const box = messageBox();
        if (box) box.focus({ preventScroll: true });
      }
    }
  });
  let watchTries = 0;
  function watchButtons() {
    const chat = el.closest(".cm-chat");
    if (chat) {
      for (const b of chat.querySelectorAll(".cm-chat-controls button")) {
        buttonsWatch.observe(b, { attributes: true, attributeFilter: ["disabled"] });
      }
      if (chat.querySelector(".cm-chat-controls button")) return;
    }
    if (watchTries++ < 100) setTimeout(watchButtons, 100);
  }
  watchButtons();

  const drawNotice = () => {
    if (!connected) return;
    notice.textContent = model.get("notice") || "";
    notice.style.display = notice.textContent ? "block" : "none";
  };
  model.on("change:frozen", drawMessages);
  model.on("change:last_reply", redrawAll);
  model.on("change:live", () => drawLive(false));
  model.on("change:notice", drawNotice);
  // `earlier` changes only with `frozen` (in one update): drawn by drawMessages, once the
  // messages are in, so that hiding the button does not move what is read first.
  // Tell the kernel which branch is on screen: Send and Stop act on it, even when the
  // kernel moved the view to another branch before it handled the click.
  const showing = () => send({ event: "showing", branch: model.get("branch") });
  model.on("change:branch", showing);
  showing();
  drawLive(true);
  drawMessages();
  drawNotice();
  return () => {
    resized.disconnect();
    buttonsWatch.disconnect();
  };
}

export default { render };
