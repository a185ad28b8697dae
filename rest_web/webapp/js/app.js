// The app's state and actions: who is logged in, friends and their keys, conversations and
// their messages, receipts, typing and presence. It turns session events into state and user
// actions into session calls; ui/view.js draws the state. Bounded everywhere: messages kept in
// memory per conversation, conversations, typing entries.

import { pairConvId, groupConvId, parseConvId } from "./core/conv.js";
import { MessageIds } from "./core/ids.js";
import { Outbox, OutboxFull } from "./core/outbox.js";
import { Session } from "./core/session.js";
import { openSealed, openText, sealText, seal } from "./crypto/seal.js";
import { Connection } from "./net/connection.js";
import { downloadFile, uploadFile } from "./net/files.js";
import { Rest, RestError } from "./net/rest.js";
import * as upcoming from "./net/upcoming.js";
import { AckType, DestType, ErrorCode, FileBody, MsgType, SystemBody, SystemBody_Event } from "./proto/im.js";

// Messages held per conversation; older ones come back from history when scrolled to.
export const KEEP_MESSAGES = 500;
export const HISTORY_PAGE = 50;
// A typing start lasts this long unless repeated (SPEC-im.proto Typing).
export const TYPING_TTL = 6000;
// Send a typing start at most this often while the user types.
export const TYPING_EVERY = 3000;
// Device states kept in localStorage per user (since and haves): one per recent tab.
export const KEEP_DEVICE_STATES = 8;

const SESSION_KEY = "im:session";
const text = new TextDecoder();

export class App {
  constructor(onChange) {
    this.onChange = onChange;
    this.rest = new Rest("");
    this.reset();
  }

  reset() {
    this.me = null;
    this.deviceId = null;
    this.caps = { requests: false, blocks: false, groups: false, conversations: false, history: false };
    this.friends = new Map(); // user -> key
    this.groups = new Map(); // group id -> normalized group
    this.convs = new Map(); // conv id -> conversation
    this.requests = { incoming: [], outgoing: [] };
    this.blocked = [];
    this.presence = new Map(); // user -> {online, lastSeen}
    this.activeConv = null;
    this.link = "offline";
    this.notice = null;
    this.session = null;
    this.connection?.stop();
    this.connection = null;
    this.ids = new MessageIds(0);
    this.typingSentAt = 0;
  }

  changed(what = "all") {
    this.onChange?.(what);
  }

  // ---------------------------------------------------------------- account

  deviceFor(user) {
    // one device per tab: sessionStorage survives a reload but not a new tab
    let id = sessionStorage.getItem(`im:device:${user}`);
    if (!id) {
      const rnd = crypto.getRandomValues(new Uint8Array(6));
      id = `web-${Array.from(rnd, (b) => b.toString(16).padStart(2, "0")).join("")}`;
      sessionStorage.setItem(`im:device:${user}`, id);
    }
    return id;
  }

  async register(user, password) {
    await this.rest.register(user, password);
    return this.login(user, password);
  }

  async login(user, password) {
    const deviceId = this.deviceFor(user);
    const answer = await this.rest.login(user, password, deviceId);
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ answer, deviceId }));
    await this.start(answer, deviceId);
  }

  // A tab reload: the token from sessionStorage, if it has not expired.
  async resume() {
    const saved = sessionStorage.getItem(SESSION_KEY);
    if (!saved) return false;
    const { answer, deviceId } = JSON.parse(saved);
    if (!answer?.token || answer.expires_at * 1000 < Date.now()) return false;
    this.rest.token = answer.token;
    try {
      await this.start(answer, deviceId);
    } catch (err) {
      if (err instanceof RestError && err.status === 401) {
        sessionStorage.removeItem(SESSION_KEY);
        this.reset();
        return false;
      }
      throw err;
    }
    return true;
  }

  async logout() {
    this.saveDeviceState();
    this.connection?.stop();
    try {
      await this.rest.logout();
    } catch {
      // logged out locally either way
    }
    sessionStorage.removeItem(SESSION_KEY);
    this.reset();
    this.changed();
  }

  async start(answer, deviceId) {
    this.reset();
    this.me = answer.user_id;
    this.deviceId = deviceId;
    this.loginAnswer = answer;
    this.ids = new MessageIds(answer.slot ?? 0);
    for (const f of answer.friends ?? []) this.addFriendKey(f.user_id, f.key);
    this.caps = await upcoming.capabilities(this.rest);
    await this.refreshSocial();
    const state = this.loadDeviceState();
    const outbox = new Outbox();
    this.session = new Session({
      userId: this.me,
      deviceId,
      token: answer.token,
      since: BigInt(state.since ?? 0),
      haves: Object.fromEntries(Object.entries(state.haves ?? {}).map(([k, v]) => [k, BigInt(v)])),
      outbox,
    });
    this.connection = new Connection({
      url: upcoming.websocketUrl(answer),
      session: this.session,
      onEvent: (ev) => this.onEvent(ev),
    });
    this.connection.start();
    this.changed();
  }

  deviceStateKey() {
    return `im:state:${this.me}:${this.deviceId}`;
  }

  loadDeviceState() {
    try {
      return JSON.parse(localStorage.getItem(this.deviceStateKey()) ?? "{}");
    } catch {
      return {};
    }
  }

  saveDeviceState() {
    if (!this.session) return;
    const key = this.deviceStateKey();
    localStorage.setItem(key, JSON.stringify({ ...this.session.snapshot(), at: Date.now() }));
    // keep the newest few device states of this user; tabs closed long ago go
    const mine = [];
    for (let i = 0; i < localStorage.length; i++) {
      const k = localStorage.key(i);
      if (k?.startsWith(`im:state:${this.me}:`)) {
        let at = 0;
        try {
          at = JSON.parse(localStorage.getItem(k)).at ?? 0;
        } catch {
          // damaged: oldest
        }
        mine.push([at, k]);
      }
    }
    mine.sort((a, b) => b[0] - a[0]);
    for (const [, k] of mine.slice(KEEP_DEVICE_STATES)) localStorage.removeItem(k);
  }

  // ---------------------------------------------------------------- friends and groups

  addFriendKey(user, key) {
    this.friends.set(user, key);
    this.conv(pairConvId(this.me, user));
  }

  async refreshSocial() {
    const [friends, requests, blocked, groups, convs] = await Promise.all([
      this.rest.friends(),
      upcoming.friendRequests(this.rest, this.caps),
      upcoming.blocks(this.rest, this.caps),
      upcoming.groups(this.rest, this.caps),
      upcoming.conversations(this.rest, this.caps),
    ]);
    for (const f of friends) this.addFriendKey(f.user_id, f.key);
    this.requests = requests;
    this.blocked = blocked;
    for (const g of groups) this.addGroup(g);
    for (const c of convs) this.applyConvSummary(c);
    this.changed();
    // a member's groups need their keys (and members) before anything opens or goes out
    await Promise.all(groups.filter((g) => g.state !== "invited").map((g) => this.loadGroup(g.group_id).catch(() => {})));
    this.changed();
  }

  addGroup(g) {
    const old = this.groups.get(g.group_id);
    if (old) {
      g.keys = { ...old.keys, ...g.keys };
      g.key_id = Math.max(g.key_id, old.key_id);
      if (!g.members.length) g.members = old.members;
    }
    this.groups.set(g.group_id, g);
    this.conv(groupConvId(g.group_id)).title = g.name;
  }

  // The group with its members and the keys this user may hold (GET /groups/{id}/keys):
  // sealing takes the newest, opening the one a chat's key_id names. One fetch per group at a
  // time; the answer is merged into what was known.
  loadGroup(groupId) {
    this.groupLoads ??= new Map();
    const running = this.groupLoads.get(groupId);
    if (running) return running;
    const load = (async () => {
      const [g, keys] = await Promise.all([
        upcoming.group(this.rest, this.caps, groupId),
        upcoming.groupKeys(this.rest, this.caps, groupId),
      ]);
      for (const k of keys) g.keys[k.key_id] = k.key;
      const ids = Object.keys(g.keys).map(Number);
      if (ids.length) g.key_id = Math.max(...ids);
      this.addGroup(g);
      return this.groups.get(groupId);
    })().finally(() => this.groupLoads.delete(groupId));
    this.groupLoads.set(groupId, load);
    return load;
  }

  // The key for a chat of `c` (key_id), fetching the group's keys once when it names a key
  // newer than any held (a rotation this page has not heard of yet).
  async keyOrFetch(c, keyId) {
    let key = this.keyFor(c, keyId);
    if (key || c.kind !== "group") return key;
    const g = this.groups.get(c.peer);
    if (!g || keyId > g.key_id || !Object.keys(g.keys).length) {
      try {
        await this.loadGroup(c.peer);
      } catch {
        return undefined;
      }
      key = this.keyFor(c, keyId);
    }
    return key;
  }

  // PUT /friends/X: 202 is a request sent, 200 a friendship (the key comes with it). Both
  // name the user as the server knows them (ids are case-insensitive: "Vic" is "vic").
  async addFriend(typed) {
    if (typed.toLowerCase() === this.me) throw new RestError(400, "that is you");
    const r = await this.rest.addFriend(typed);
    const user = r.user_id ?? typed;
    if (r.status === 200 && r.key) {
      this.addFriendKey(user, r.key);
      this.requests.incoming = this.requests.incoming.filter((u) => u !== user);
      this.requests.outgoing = this.requests.outgoing.filter((u) => u !== user);
      this.changed();
      return "friends";
    }
    if (!this.requests.outgoing.includes(user)) this.requests.outgoing.push(user);
    this.changed();
    return "requested";
  }

  acceptRequest(user) {
    return this.addFriend(user);
  }

  async declineRequest(user) {
    await this.rest.removeFriend(user);
    this.requests.incoming = this.requests.incoming.filter((u) => u !== user);
    this.requests.outgoing = this.requests.outgoing.filter((u) => u !== user);
    this.changed();
  }

  async block(user) {
    await upcoming.block(this.rest, this.caps, user);
    this.friends.delete(user);
    if (!this.blocked.includes(user)) this.blocked.push(user);
    this.changed();
  }

  async unblock(user) {
    await upcoming.unblock(this.rest, this.caps, user);
    this.blocked = this.blocked.filter((u) => u !== user);
    this.changed();
  }

  async createGroup(name, members) {
    const g = await upcoming.createGroup(this.rest, this.caps, name, members);
    this.addGroup(g);
    await this.loadGroup(g.group_id).catch(() => {});
    this.changed();
    return groupConvId(g.group_id);
  }

  async invite(groupId, user) {
    await upcoming.invite(this.rest, this.caps, groupId, user);
    await this.loadGroup(groupId);
    this.changed();
  }

  async leave(groupId) {
    await upcoming.leave(this.rest, this.caps, groupId, this.me);
    this.groups.delete(groupId);
    this.convs.delete(groupConvId(groupId));
    if (this.activeConv === groupConvId(groupId)) this.activeConv = null;
    this.changed();
  }

  // ---------------------------------------------------------------- conversations

  conv(convId) {
    let c = this.convs.get(convId);
    if (c === undefined) {
      const parsed = parseConvId(convId, this.me) ?? { kind: "unknown" };
      c = {
        convId,
        kind: parsed.kind,
        peer: parsed.kind === "pair" ? parsed.peer : parsed.kind === "group" ? parsed.groupId : convId,
        title: parsed.kind === "pair" ? parsed.peer : parsed.groupId ?? convId,
        messages: new Map(), // key (seq, or "o"+id while unsent) -> message
        unread: 0,
        readSeq: 0n,
        peerRead: 0n,
        peerDelivered: 0n,
        lastSeq: 0n,
        receipts: new Map(), // group: seq -> {members, delivered, read}
        typing: new Map(), // user -> expires at (ms)
        lastTime: 0,
        oldestLoaded: null,
        historyDone: false,
      };
      this.convs.set(convId, c);
    }
    return c;
  }

  applyConvSummary(s) {
    const c = this.conv(s.conv_id);
    const big = (v) => BigInt(v ?? 0);
    c.lastSeq = big(s.last_seq) > c.lastSeq ? big(s.last_seq) : c.lastSeq;
    c.readSeq = big(s.read_seq);
    c.peerRead = big(s.peer_read_seq) > c.peerRead ? big(s.peer_read_seq) : c.peerRead;
    c.peerDelivered = big(s.peer_delivered_seq) > c.peerDelivered ? big(s.peer_delivered_seq) : c.peerDelivered;
    c.unread = Number(s.unread ?? 0);
    // REST gives the last message sealed (an object): it orders the list; its text comes with
    // the history page, opened with the conversation's key
    const last = s.last_message;
    if (last && typeof last === "object") c.lastTime = Math.max(c.lastTime || 0, Number(last.server_time ?? 0));
    else if (last) c.preview = last;
  }

  keyFor(c, keyId = 0) {
    if (c.kind === "pair") return this.friends.get(c.peer);
    if (c.kind === "group") return this.groups.get(c.peer)?.keys[keyId];
    return undefined;
  }

  sortedConversations() {
    return [...this.convs.values()]
      .filter((c) => c.kind === "pair" || c.kind === "group")
      .sort((a, b) => b.lastTime - a.lastTime || a.title.localeCompare(b.title));
  }

  open(convId) {
    this.activeConv = convId;
    const c = this.conv(convId);
    if (c.messages.size < HISTORY_PAGE) this.loadOlder(convId);
    this.changed();
  }

  // The view is at the bottom of the open conversation and the page is visible: read.
  sawBottom(convId) {
    const c = this.convs.get(convId);
    if (!c || !this.session) return;
    let top = c.readSeq;
    for (const m of c.messages.values()) if (m.seq !== null && m.seq > top) top = m.seq;
    if (top > c.readSeq || c.unread) {
      c.readSeq = top;
      c.unread = 0;
      this.connection?.run(this.session.markRead(convId, top, Date.now()));
      this.changed("list");
    }
  }

  async loadOlder(convId) {
    const c = this.conv(convId);
    if (c.historyDone || c.loading) return;
    c.loading = true;
    try {
      let oldest = null;
      for (const m of c.messages.values()) if (m.seq !== null && (oldest === null || m.seq < oldest)) oldest = m.seq;
      const before = oldest ?? 0n;
      const local = () => []; // the stub: nothing beyond what the session synced
      const chats = await upcoming.history(this.rest, this.caps, convId, before, HISTORY_PAGE, local);
      if (chats.length < HISTORY_PAGE) c.historyDone = true;
      for (const chat of chats) await this.take(c, chat, { history: true });
    } catch (err) {
      this.notice = `history: ${err.message}`;
    } finally {
      c.loading = false;
      this.changed();
    }
  }

  // ---------------------------------------------------------------- session events

  async onEvent(ev) {
    switch (ev.name) {
      case "state":
        this.link = ev.state;
        this.changed("status");
        return;
      case "welcome":
        if (ev.welcome.id_slot !== undefined) this.ids.setSlot(ev.welcome.id_slot);
        this.notice = null;
        return;
      case "conv":
        this.applyConvState(ev.state);
        return;
      case "caught-up":
        this.saveDeviceState();
        return;
      case "messages": {
        const c = this.conv(ev.convId);
        for (const chat of ev.chats) await this.take(c, chat, { live: true });
        this.saveDeviceState();
        this.changed();
        return;
      }
      case "sent":
        this.onSent(ev);
        return;
      case "failed":
        this.onFailed(ev);
        return;
      case "cursor":
        this.onCursor(ev);
        return;
      case "group-receipt": {
        const r = ev.receipt;
        this.conv(r.conv_id).receipts.set(r.seq, { members: r.members, delivered: r.delivered, read: r.read });
        this.changed("messages");
        return;
      }
      case "typing":
        this.onTyping(ev);
        return;
      case "presence":
        this.presence.set(ev.userId, { online: ev.online, lastSeen: Number(ev.lastSeen) });
        this.changed("list");
        return;
      case "closed":
        if (!ev.reconnect) {
          this.notice = ev.reason;
          if (ev.code === ErrorCode.BAD_TOKEN || ev.code === ErrorCode.KICKED) {
            await this.logout();
            this.notice = ev.reason;
          }
          this.changed();
        }
        return;
      case "stale-key":
        this.resealText(ev);
        return;
      default:
        return;
    }
  }

  applyConvState(s) {
    const c = this.conv(s.conv_id);
    if (s.type === DestType.GROUP && !this.groups.has(s.peer_id)) {
      this.loadGroup(s.peer_id).then(() => this.changed(), () => {});
    }
    if (s.type === DestType.SINGLE && s.peer_id && !this.friends.has(s.peer_id)) c.title = s.peer_id;
    this.applyConvSummary(s);
    this.changed("list");
  }

  onSent(ev) {
    const c = this.conv(ev.convId);
    const pending = c.messages.get(`o${ev.id}`);
    c.messages.delete(`o${ev.id}`);
    if (pending) {
      pending.seq = ev.seq;
      pending.time = pending.time || Date.now();
      c.messages.set(String(ev.seq), pending);
    }
    if (ev.seq > c.lastSeq) c.lastSeq = ev.seq;
    if (ev.seq > c.readSeq) c.readSeq = ev.seq; // your own message is read by you
    this.changed("messages");
  }

  onFailed(ev) {
    const c = this.conv(ev.convId);
    const m = c.messages.get(`o${ev.id}`);
    if (m) m.failed = errorText(ev.code, ev.detail);
    this.changed("messages");
  }

  onCursor(ev) {
    const c = this.conv(ev.convId);
    if (ev.mine) {
      if (ev.kind === "read" && ev.seq > c.readSeq) {
        c.readSeq = ev.seq;
        let unread = 0;
        for (const m of c.messages.values()) if (m.from !== this.me && m.seq !== null && m.seq > ev.seq) unread++;
        c.unread = Math.min(c.unread, unread);
        this.changed("list");
      }
      return;
    }
    if (c.kind !== "pair") return;
    if (ev.kind === "read" && ev.seq > c.peerRead) c.peerRead = ev.seq;
    if (ev.seq > c.peerDelivered) c.peerDelivered = ev.seq; // read implies delivered
    this.changed("messages");
  }

  onTyping(ev) {
    if (ev.userId === this.me) return;
    const c = this.conv(ev.convId);
    if (ev.typing) c.typing.set(ev.userId, Date.now() + TYPING_TTL);
    else c.typing.delete(ev.userId);
    this.changed("typing");
    setTimeout(() => this.changed("typing"), TYPING_TTL + 50);
  }

  typingIn(convId) {
    const c = this.convs.get(convId);
    if (!c) return [];
    const now = Date.now();
    for (const [u, until] of c.typing) if (until <= now) c.typing.delete(u);
    return [...c.typing.keys()];
  }

  // A chat from the session or from history into the conversation, opened.
  async take(c, chat, { live = false, history = false } = {}) {
    const key = String(chat.seq);
    if (c.messages.has(key)) return;
    const m = {
      id: chat.id,
      seq: chat.seq,
      from: chat.from_id,
      time: Number(chat.server_time || chat.create_time),
      kind: "text",
      text: "",
    };
    try {
      await this.openInto(c, chat, m);
    } catch (err) {
      m.kind = "error";
      m.text = `cannot open this message (${err.message})`;
    }
    c.messages.set(key, m);
    if (chat.seq > c.lastSeq) c.lastSeq = chat.seq;
    if (m.time > c.lastTime) {
      c.lastTime = m.time;
      c.preview = previewOf(m);
    }
    if (live && m.from !== this.me && chat.seq > c.readSeq && this.activeConv !== c.convId) c.unread += 1;
    if (live && m.from !== this.me) c.typing.delete(m.from);
    if (!history) this.trim(c);
  }

  async openInto(c, chat, m) {
    if (chat.msg_type === MsgType.SYSTEM) {
      m.kind = "system";
      const body = SystemBody.decode(chat.body);
      m.text = systemText(body);
      // a new key (someone left): fetch it now, so the next message is sealed with it
      if (body.event === SystemBody_Event.KEY_ROTATED && c.kind === "group") {
        this.loadGroup(c.peer).then(() => this.changed(), () => {});
      }
      return;
    }
    const key = await this.keyOrFetch(c, chat.key_id ?? 0);
    if (!key) throw new Error("no key for this conversation");
    if (chat.msg_type === MsgType.FILE) {
      const plain = await openSealed(key, chat.id, chat.from_id, chat.dest_id, chat.body);
      const info = FileBody.decode(plain);
      m.kind = "file";
      m.file = { ref: chat.file, info };
      m.text = info.name;
      return;
    }
    m.text = await openText(key, chat.id, chat.from_id, chat.dest_id, chat.body);
  }

  trim(c) {
    if (c.messages.size <= KEEP_MESSAGES) return;
    const keys = [...c.messages.entries()]
      .filter(([, m]) => m.seq !== null)
      .sort((a, b) => (a[1].seq < b[1].seq ? -1 : 1))
      .map(([k]) => k);
    for (const k of keys.slice(0, c.messages.size - KEEP_MESSAGES)) c.messages.delete(k);
    c.historyDone = false;
  }

  // ---------------------------------------------------------------- sending

  destOf(c) {
    if (c.kind === "pair") return { dest_id: c.peer, dest_type: DestType.SINGLE, key_id: 0 };
    const g = this.groups.get(c.peer);
    return { dest_id: c.peer, dest_type: DestType.GROUP, key_id: g?.key_id ?? 0 };
  }

  async sendText(convId, body) {
    const c = this.conv(convId);
    if (c.kind === "group") await this.keyOrFetch(c, this.destOf(c).key_id);
    const dest = this.destOf(c);
    const key = this.keyFor(c, dest.key_id);
    if (!key) throw new Error("no key for this conversation yet");
    const id = this.ids.next();
    const sealed = await sealText(key, id, this.me, dest.dest_id, body);
    this.queue(c, { id, msg_type: MsgType.TEXT, body: sealed, ...dest }, { kind: "text", text: body });
    this.stopTyping(convId);
  }

  async sendFile(convId, file, onProgress) {
    const c = this.conv(convId);
    if (c.kind === "group") await this.keyOrFetch(c, this.destOf(c).key_id);
    const dest = this.destOf(c);
    const key = this.keyFor(c, dest.key_id);
    if (!key) throw new Error("no key for this conversation yet");
    const up = await uploadFile(this.rest, file, file.name, onProgress);
    const id = this.ids.next();
    const sealed = await seal(key, id, this.me, dest.dest_id, FileBody.encode(up.body));
    this.queue(c, { id, msg_type: MsgType.FILE, body: sealed, file: up.ref, ...dest },
      { kind: "file", text: up.body.name, file: { ref: up.ref, info: up.body } });
  }

  // A group text refused STALE_KEY (sealed with a key the group replaced): fetch the keys and
  // send it again under the new one, as a new message; once only, then the user is told.
  async resealText(ev) {
    const c = this.conv(ev.convId);
    const m = c.messages.get(`o${ev.id}`);
    if (!m || m.kind !== "text" || m.resealed || c.kind !== "group") {
      if (m) m.failed = "the group's key changed: send it again";
      this.changed();
      return;
    }
    c.messages.delete(`o${ev.id}`);
    try {
      await this.loadGroup(c.peer);
      await this.sendText(ev.convId, m.text);
      const again = [...c.messages.values()].at(-1);
      if (again && again.text === m.text) again.resealed = true;
    } catch (err) {
      m.failed = `not sent: ${err.message}`;
      c.messages.set(`o${ev.id}`, m);
    }
    this.changed();
  }

  queue(c, fields, shown) {
    const chat = { from_id: this.me, create_time: BigInt(Date.now()), ...fields };
    const m = { id: chat.id, seq: null, from: this.me, time: Date.now(), ...shown };
    try {
      this.connection.run(this.session.sendChat(chat, c.convId, Date.now()));
    } catch (err) {
      if (err instanceof OutboxFull) throw new Error("too many messages are waiting to be sent");
      throw err;
    }
    c.messages.set(`o${chat.id}`, m);
    c.lastTime = m.time;
    c.preview = previewOf(m);
    this.changed();
  }

  async download(m) {
    return downloadFile(this.rest, m.file.ref, m.file.info);
  }

  typing(convId, hasText) {
    if (!this.session || !this.connection) return;
    const now = Date.now();
    if (!hasText) return this.stopTyping(convId);
    if (now - this.typingSentAt < TYPING_EVERY) return;
    this.typingSentAt = now;
    this.connection.run(this.session.typing(convId, true, now));
  }

  stopTyping(convId) {
    if (this.typingSentAt === 0 || !this.session) return;
    this.typingSentAt = 0;
    this.connection.run(this.session.typing(convId, false, Date.now()));
  }

  // sent | delivered | read (or sending / failed before SENT) of a message, as its sender sees.
  statusOf(c, m) {
    if (m.seq === null) return m.failed ? "failed" : "sending";
    if (m.from !== this.me) return m.seq <= c.readSeq ? "read" : "delivered";
    if (c.kind === "group") {
      const r = this.groupReceipt(c, m.seq);
      if (r && r.members > 0 && r.read >= r.members) return "read";
      if (r && r.members > 0 && r.delivered >= r.members) return "delivered";
      return "sent";
    }
    if (m.seq <= c.peerRead) return "read";
    if (m.seq <= c.peerDelivered) return "delivered";
    return "sent";
  }

  groupReceipt(c, seq) {
    return c.receipts.get(seq);
  }
}

export function previewOf(m) {
  if (m.kind === "file") return `📎 ${m.text}`;
  return m.text.length > 80 ? `${m.text.slice(0, 80)}…` : m.text;
}

function systemText(b) {
  const E = SystemBody_Event;
  switch (b.event) {
    case E.CREATED: return `${b.actor} created the group`;
    case E.JOINED: return `${b.target} joined`;
    case E.LEFT: return `${b.target} left`;
    case E.REMOVED: return `${b.actor} removed ${b.target}`;
    case E.ROLE: return `${b.target} is now ${b.text}`;
    case E.MUTED: return b.until > 0n ? `${b.actor} muted ${b.target}` : `${b.target} can post again`;
    case E.DISSOLVED: return `${b.actor} dissolved the group`;
    case E.KEY_ROTATED: return "the group key changed";
    case E.NOTICE: return b.text;
    case E.RENAMED: return `${b.actor} renamed the group to ${b.text}`;
    default: return "";
  }
}

export function errorText(code, detail) {
  const names = {
    [ErrorCode.NOT_FRIEND]: "not delivered: you are not friends",
    [ErrorCode.TOO_LARGE]: "not delivered: too large",
    [ErrorCode.NOT_MEMBER]: "not delivered: you are not a member",
    [ErrorCode.MUTED]: "not delivered: you are muted here",
    [ErrorCode.REFUSED]: "not delivered: refused",
    [ErrorCode.NO_SUCH_FILE]: "not delivered: the file is gone",
  };
  return names[code] ?? `not delivered (${detail || code})`;
}

export { AckType, text };
