// Draws the app's state (app.js) into the page. No framework: each region is rebuilt from the
// state when it changes, except that the message list keeps its scroll position (stuck to the
// bottom when it was there) and the composer is never touched, so focus and typing survive.
// The data-testid hooks are contracts read by outside checks (issue 16): keep their names.

export const $ = (id) => document.getElementById(id);

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

function when(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  return today ? timeFmt.format(d) : dayFmt.format(d);
}

function initial(name) {
  return (name || "?").slice(0, 1).toUpperCase();
}

function presenceDot(app, user) {
  const p = app.presence.get(user);
  const state = p?.online ? "online" : "offline";
  const label = p?.online ? "online" : p?.lastSeen ? `last seen ${when(p.lastSeen)}` : "offline";
  return h("span", {
    class: `presence ${state}`,
    "data-testid": "presence",
    "data-peer": user,
    "data-state": state,
    title: label,
    "aria-label": label,
    role: "img",
  });
}

export function renderList(app, actions) {
  $("me").textContent = app.me ?? "";
  const list = $("conv-list");
  const focused = document.activeElement?.closest?.(".conv-item")?.dataset.conv;
  list.replaceChildren(
    ...app.sortedConversations().map((c) => {
      const active = c.convId === app.activeConv;
      const unread = c.unread > 0 && !active ? c.unread : 0;
      const label = `${c.title}${unread ? `, ${unread} unread` : ""}`;
      return h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            class: `conv-item${active ? " active" : ""}`,
            "data-testid": "conversation-item",
            "data-peer": c.peer,
            "data-conv": c.convId,
            "data-unread": unread,
            "aria-current": active ? "true" : undefined,
            "aria-label": label,
            onclick: () => actions.open(c.convId),
          },
          h("span", { class: "avatar", "aria-hidden": "true" }, initial(c.title),
            c.kind === "pair" ? presenceDot(app, c.peer) : null),
          h("span", { class: "conv-text" },
            h("span", { class: "conv-top" },
              h("span", { class: "conv-name" }, c.title),
              h("span", { class: "conv-time muted small" }, when(c.lastTime))),
            h("span", { class: "conv-bottom" },
              h("span", { class: "conv-preview muted" }, c.preview ?? (c.kind === "group" ? "Group" : "Say hello")),
              unread ? h("span", { class: "badge", "aria-hidden": "true" }, unread > 99 ? "99+" : unread) : null)),
        ),
      );
    }),
  );
  if (focused) list.querySelector(`[data-conv="${CSS.escape(focused)}"]`)?.focus();
  renderRequests(app, actions);
  renderBlocked(app, actions);
  $("side-notice").textContent = app.notice ?? "";
  $("new-group").disabled = !app.caps.groups;
  $("new-group").title = app.caps.groups ? "New group" : "Groups need a newer server";
}

function renderRequests(app, actions) {
  const box = $("requests");
  const { incoming, outgoing } = app.requests;
  box.hidden = incoming.length + outgoing.length === 0;
  box.replaceChildren(
    h("h3", { class: "small muted" }, "Friend requests"),
    ...incoming.map((u) =>
      h("div", { class: "request", "data-user": u },
        h("span", {}, u),
        h("button", { type: "button", class: "primary", "data-testid": "friend-request-accept",
          "data-peer": u, onclick: () => actions.accept(u) }, "Accept"),
        h("button", { type: "button", class: "ghost", "data-testid": "friend-request-decline",
          "data-peer": u, onclick: () => actions.decline(u) }, "Decline"))),
    ...outgoing.map((u) =>
      h("div", { class: "request", "data-user": u },
        h("span", {}, u, h("span", { class: "muted small" }, " · waiting")),
        h("button", { type: "button", class: "ghost", onclick: () => actions.decline(u) }, "Withdraw"))),
  );
}

function renderBlocked(app, actions) {
  const box = $("blocked");
  box.hidden = app.blocked.length === 0;
  box.replaceChildren(
    h("h3", { class: "small muted" }, "Blocked"),
    ...app.blocked.map((u) =>
      h("div", { class: "request" }, h("span", {}, u),
        h("button", { type: "button", class: "ghost", onclick: () => actions.unblock(u) }, "Unblock"))),
  );
}

export function renderStatus(app) {
  const labels = { live: "", greeting: "connecting…", offline: "offline — reconnecting" };
  const el = $("link-state");
  el.textContent = labels[app.link] ?? app.link;
  el.dataset.state = app.link;
}

function statusLabel(app, c, m, status) {
  if (status === "failed") return m.failed;
  if (m.from !== app.me) return "";
  if (c.kind === "group" && m.seq !== null) {
    const r = app.groupReceipt(c, m.seq);
    if (r) return `read by ${r.read} of ${r.members}`;
  }
  return { sending: "sending…", sent: "sent", delivered: "delivered", read: "read" }[status] ?? status;
}

function ticks(status) {
  return { sending: "◷", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "!" }[status] ?? "";
}

function messageNode(app, c, m, actions) {
  const mine = m.from === app.me;
  const status = app.statusOf(c, m);
  const label = statusLabel(app, c, m, status);
  const body =
    m.kind === "file"
      ? h("button", { type: "button", class: "file", onclick: () => actions.download(m) },
          h("span", { "aria-hidden": "true" }, "📎 "), m.text,
          h("span", { class: "muted small" }, ` ${formatSize(m.file.info.size)}`))
      : h("p", { class: `text${m.kind === "error" ? " muted" : ""}` }, m.text);
  if (m.kind === "system") {
    return h("div", { class: "system muted small", role: "note", "data-testid": "message",
      "data-seq": m.seq ?? "", "data-from": m.from, "data-status": status }, m.text);
  }
  return h(
    "article",
    {
      class: `msg ${mine ? "mine" : "theirs"} ${status}`,
      "data-testid": "message",
      "data-status": status,
      "data-seq": m.seq === null ? "" : String(m.seq),
      "data-from": m.from,
      "aria-label": `${mine ? "You" : m.from}: ${m.text}`,
    },
    c.kind === "group" && !mine ? h("span", { class: "from small" }, m.from) : null,
    body,
    h("footer", { class: "meta small" },
      h("time", { datetime: new Date(m.time || 0).toISOString() }, when(m.time)),
      mine ? h("span", { class: `ticks ${status}`, "aria-hidden": "true" }, ticks(status)) : null,
      label ? h("span", { class: "status-label" }, label) : null),
  );
}

export function formatSize(n) {
  n = Number(n);
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function atBottom(el) {
  return el.scrollHeight - el.scrollTop - el.clientHeight < 24;
}

export function renderChat(app, actions) {
  const c = app.activeConv ? app.convs.get(app.activeConv) : null;
  document.body.classList.toggle("in-chat", Boolean(c));
  $("chat-empty").hidden = Boolean(c);
  $("chat-pane").hidden = !c;
  if (!c) return;
  $("chat-title").textContent = c.title;
  const sub = $("chat-sub");
  if (c.kind === "pair") {
    const p = app.presence.get(c.peer);
    sub.textContent = p?.online ? "online" : p?.lastSeen ? `last seen ${when(p.lastSeen)}` : "";
  } else {
    const g = app.groups.get(c.peer);
    sub.textContent = g ? `${g.members.length} members` : "group";
  }
  const box = $("messages");
  const stick = box.dataset.conv !== c.convId || atBottom(box);
  const prevHeight = box.scrollHeight;
  const prevTop = box.scrollTop;
  const sorted = [...c.messages.values()].sort((a, b) => {
    if (a.seq === null && b.seq === null) return a.time - b.time;
    if (a.seq === null) return 1;
    if (b.seq === null) return -1;
    return a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0;
  });
  const nodes = sorted.map((m) => messageNode(app, c, m, actions));
  if (c.loading) nodes.unshift(h("p", { class: "muted small center" }, "Loading…"));
  box.replaceChildren(...nodes);
  const grewAtTop = box.dataset.conv === c.convId && box.dataset.first !== String(sorted[0]?.seq ?? "");
  box.dataset.conv = c.convId;
  box.dataset.first = String(sorted[0]?.seq ?? "");
  if (stick) box.scrollTop = box.scrollHeight;
  else if (grewAtTop) box.scrollTop = prevTop + (box.scrollHeight - prevHeight);
  else box.scrollTop = prevTop;
  renderTyping(app);
}

export function renderTyping(app) {
  const el = $("typing");
  const who = app.activeConv ? app.typingIn(app.activeConv) : [];
  el.hidden = who.length === 0;
  el.dataset.peer = who.join(",");
  el.textContent =
    who.length === 0 ? "" : who.length === 1 ? `${who[0]} is typing…` : `${who.join(", ")} are typing…`;
}
