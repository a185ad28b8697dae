// Boot and user input: which screen shows, what each control does, keyboard and focus. State
// lives in app.js, drawing in ui/view.js.

import { App } from "./app.js";
import { $, atBottom, h, renderChat, renderList, renderStatus, renderTyping } from "./ui/view.js";

const app = new App(onChange);
window.imApp = app; // for the browser console and for tests

let frame = 0;
const dirty = new Set();

function onChange(what) {
  dirty.add(what);
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    const all = dirty.has("all");
    const parts = new Set(dirty);
    dirty.clear();
    if (!app.me) {
      showAuth();
      return;
    }
    showMain();
    if (all || parts.has("list") || parts.has("messages")) renderList(app, actions);
    if (all || parts.has("messages") || parts.has("list")) renderChat(app, actions);
    if (parts.has("typing")) renderTyping(app);
    renderStatus(app);
    maybeRead();
  });
}

function showAuth() {
  const wasHidden = $("auth").hidden;
  $("auth").hidden = false;
  $("main").hidden = true;
  if (wasHidden) $("login-user").focus();
  if (app.notice) $("auth-error").textContent = app.notice;
}

function showMain() {
  if (!$("main").hidden) return;
  $("auth").hidden = true;
  $("main").hidden = false;
  $("friend-add-input").focus();
}

function maybeRead() {
  if (!app.activeConv || document.visibilityState !== "visible") return;
  if ($("chat-pane").hidden) return;
  if (atBottom($("messages"))) app.sawBottom(app.activeConv);
}

// Kept in the app's state too: an action that changes the lists (a request sent) re-renders
// the side pane, which would otherwise wipe the notice it just set.
function sideNotice(message) {
  app.notice = message;
  $("side-notice").textContent = message;
}

const actions = {
  open(convId) {
    app.open(convId);
    requestAnimationFrame(() => $("composer").focus());
  },
  async accept(user) {
    try {
      await app.acceptRequest(user);
      sideNotice(`You and ${user} are friends now.`);
    } catch (err) {
      sideNotice(err.message);
    }
  },
  async decline(user) {
    try {
      await app.declineRequest(user);
    } catch (err) {
      sideNotice(err.message);
    }
  },
  async unblock(user) {
    try {
      await app.unblock(user);
    } catch (err) {
      sideNotice(err.message);
    }
  },
  async download(m) {
    try {
      const blob = await app.download(m);
      const url = URL.createObjectURL(blob);
      const a = h("a", { href: url, download: m.text });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (err) {
      sideNotice(`download failed: ${err.message}`);
    }
  },
};

// ------------------------------------------------------------------------ auth

async function auth(kind) {
  const user = $("login-user").value.trim();
  const password = $("login-password").value;
  const err = $("auth-error");
  err.textContent = "";
  if (!user || !password) {
    err.textContent = "Enter a user name and a password.";
    (user ? $("login-password") : $("login-user")).focus();
    return;
  }
  for (const b of [$("login-submit"), $("register-submit")]) b.disabled = true;
  try {
    if (kind === "register") await app.register(user, password);
    else await app.login(user, password);
    $("login-password").value = "";
  } catch (e) {
    err.textContent = e.status === 401 ? "Wrong user name or password." : e.message;
    $("login-password").focus();
  } finally {
    for (const b of [$("login-submit"), $("register-submit")]) b.disabled = false;
  }
}

$("auth-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  auth("login");
});
$("register-submit").addEventListener("click", () => auth("register"));
$("logout").addEventListener("click", () => app.logout());

// ------------------------------------------------------------------------ friends

$("friend-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("friend-add-input");
  const user = input.value.trim();
  if (!user) return;
  try {
    const result = await app.addFriend(user);
    input.value = "";
    sideNotice(result === "friends" ? `You and ${user} are friends.` : `Request sent to ${user}.`);
  } catch (err) {
    sideNotice(err.status === 404 ? `There is no user ${user}.` : err.message);
  }
});

// ------------------------------------------------------------------------ chat

const composer = $("composer");

function grow() {
  composer.style.height = "auto";
  composer.style.height = `${Math.min(composer.scrollHeight, 160)}px`;
}

async function send() {
  const body = composer.value;
  if (!body.trim() || !app.activeConv) return;
  try {
    await app.sendText(app.activeConv, body);
    composer.value = "";
    grow();
  } catch (err) {
    sideNotice(err.message);
  }
  composer.focus();
}

$("composer-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  send();
});
composer.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    send();
  }
});
composer.addEventListener("input", () => {
  grow();
  if (app.activeConv) app.typing(app.activeConv, composer.value.trim().length > 0);
});
composer.addEventListener("blur", () => app.activeConv && app.stopTyping(app.activeConv));

$("attach").addEventListener("change", async () => {
  const file = $("attach").files[0];
  $("attach").value = "";
  if (!file || !app.activeConv) return;
  const bar = $("upload");
  bar.hidden = false;
  $("upload-label").textContent = `${file.name}: encrypting`;
  try {
    await app.sendFile(app.activeConv, file, (phase, done, total) => {
      $("upload-label").textContent = `${file.name}: ${phase}`;
      $("upload-progress").value = total ? Math.round((100 * done) / total) : 100;
    });
  } catch (err) {
    sideNotice(`${file.name}: ${err.message}`);
  } finally {
    bar.hidden = true;
    composer.focus();
  }
});

const messages = $("messages");
messages.addEventListener("scroll", () => {
  if (messages.scrollTop < 40 && app.activeConv) app.loadOlder(app.activeConv);
  maybeRead();
});
document.addEventListener("visibilitychange", maybeRead);
window.addEventListener("focus", maybeRead);

$("back").addEventListener("click", () => {
  const conv = app.activeConv;
  app.activeConv = null;
  onChange("all");
  requestAnimationFrame(() => document.querySelector(`[data-conv="${CSS.escape(conv)}"]`)?.focus());
});

document.addEventListener("keydown", (ev) => {
  // Escape in a narrow layout goes back to the list (dialogs close themselves on Escape)
  if (ev.key === "Escape" && !document.querySelector("dialog[open]") && app.activeConv
      && document.body.classList.contains("in-chat") && getComputedStyle($("back")).display !== "none") {
    $("back").click();
  }
});

// ------------------------------------------------------------------------ dialogs

for (const d of document.querySelectorAll("dialog")) {
  d.addEventListener("click", (ev) => {
    if (ev.target.closest("[data-close]") || ev.target === d) d.close();
  });
}

$("new-group").addEventListener("click", () => {
  const box = $("group-members");
  box.replaceChildren(
    h("legend", {}, "Members"),
    ...[...app.friends.keys()].sort().map((u) =>
      h("label", { class: "check" }, h("input", { type: "checkbox", value: u }), ` ${u}`)),
  );
  $("group-error").textContent = "";
  $("group-dialog").showModal();
  $("group-name").focus();
});

$("group-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = $("group-name").value.trim();
  const members = [...$("group-members").querySelectorAll("input:checked")].map((i) => i.value);
  if (!name) return;
  try {
    const convId = await app.createGroup(name, members);
    $("group-dialog").close();
    actions.open(convId);
  } catch (err) {
    $("group-error").textContent = err.message;
  }
});

$("chat-info").addEventListener("click", () => {
  const c = app.convs.get(app.activeConv);
  if (!c) return;
  const isGroup = c.kind === "group";
  const g = isGroup ? app.groups.get(c.peer) : null;
  $("info-title").textContent = c.title;
  $("info-members").replaceChildren(
    ...(g?.members ?? []).map((m) => h("li", {}, m.user_id, h("span", { class: "muted small" }, ` ${m.role ?? ""}`))),
  );
  $("invite-form").hidden = !isGroup;
  $("leave-group").hidden = !isGroup;
  $("block-user").hidden = isGroup;
  $("unfriend").hidden = isGroup;
  $("info-error").textContent = "";
  $("info-dialog").showModal();
});

$("invite-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const c = app.convs.get(app.activeConv);
  const user = $("invite-user").value.trim();
  if (!c || !user) return;
  try {
    await app.invite(c.peer, user);
    $("invite-user").value = "";
    $("info-dialog").close();
  } catch (err) {
    $("info-error").textContent = err.message;
  }
});

async function dialogAction(fn) {
  try {
    await fn();
    $("info-dialog").close();
  } catch (err) {
    $("info-error").textContent = err.message;
  }
}

$("leave-group").addEventListener("click", () => dialogAction(() => app.leave(app.convs.get(app.activeConv).peer)));
$("block-user").addEventListener("click", () => dialogAction(() => app.block(app.convs.get(app.activeConv).peer)));
$("unfriend").addEventListener("click", () =>
  dialogAction(async () => {
    const c = app.convs.get(app.activeConv);
    await app.declineRequest(c.peer);
    app.friends.delete(c.peer);
    app.convs.delete(c.convId);
    app.activeConv = null;
    onChange("all");
  }),
);

// ------------------------------------------------------------------------ boot

window.addEventListener("pagehide", () => app.saveDeviceState());

async function boot() {
  if (!window.isSecureContext || !crypto.subtle) {
    document.body.replaceChildren(
      h("p", { class: "fatal", role: "alert" },
        "This page needs a secure context for its encryption: open it over HTTPS, or at 127.0.0.1 / localhost."),
    );
    return;
  }
  try {
    if (!(await app.resume())) onChange("all");
  } catch (err) {
    app.notice = err.message;
    onChange("all");
  }
}

boot();
