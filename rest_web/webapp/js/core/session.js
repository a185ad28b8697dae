// The browser's side of the protocol (SPEC-timeline.md), sans-IO: the connection shell feeds it
// decoded envelopes, link events and the time; it answers with effects. Nothing here touches a
// socket, a timer, storage or the DOM, so tests drive it with scripted frames.
//
// Effects: {type: "write", env} (an envelope to send), {type: "event", name, ...} (for the app),
// {type: "close", reason, reconnect} (drop the link; reconnect or not).
//
// Rules it keeps:
// - nothing but GREET before WELCOME; GREET carries the `since` of the last CAUGHT_UP;
// - every conversation's timeline (core/timeline.js) decides duplicates, holds and syncs; at
//   most MAX_SYNCS_OUT syncs are out at once, so catching up on many conversations does not fill
//   the window; a sync unanswered for SYNC_TIMEOUT is asked again;
// - the outbox (core/outbox.js) keeps every chat until SENT or a final error, and resends all of
//   it after WELCOME; SENT at seq s counts as holding s;
// - DELIVERED follows `have`, READ follows what the app marks read; both only move forward, are
//   coalesced to one frame per conversation per CURSOR_EVERY, and are sent again after a
//   reconnect;
// - link acks are cumulative, one per flush; pings are answered; something is sent at least
//   every heartbeat_ms; silence for IDLE_FACTOR heartbeats means the link is dead.

import { AckType, ErrorCode, PresenceState } from "../proto/im.js";
import { LinkError, LinkState } from "./link.js";
import { Outbox } from "./outbox.js";
import { Timeline } from "./timeline.js";

export const MAX_SYNCS_OUT = 4;
// A sync page is at most 200 chats (SPEC-im.proto); 30 s without its sync_done means it was lost.
export const SYNC_TIMEOUT = 30_000;
// DELIVERED and READ at most this often per conversation (SPEC-timeline.md suggests 100 ms).
export const CURSOR_EVERY = 100;
// Without WELCOME's heartbeat: the server's default (common/config.py heartbeat, 15 s).
export const DEFAULT_HEARTBEAT = 15_000;
// The server closes after 60 s of silence, four heartbeats (common/config.py idle_timeout).
export const IDLE_FACTOR = 4;
// Conversations tracked at once; a server naming more is misbehaving.
export const MAX_CONVERSATIONS = 20_000;

// Errors after which reconnecting cannot help until the user acts.
const TERMINAL = new Map([
  [ErrorCode.BAD_TOKEN, "your session has expired: log in again"],
  [ErrorCode.REPLACED, "this device connected elsewhere"],
  [ErrorCode.TOO_MANY_DEVICES, "too many devices are online for this account"],
  [ErrorCode.KICKED, "an administrator disconnected this device: log in again"],
]);

const write = (env) => ({ type: "write", env });
const event = (name, data = {}) => ({ type: "event", name, ...data });

export class Session {
  constructor({ userId, deviceId, token, since = 0n, haves = {}, outbox = null }) {
    this.userId = userId;
    this.deviceId = deviceId;
    this.token = token;
    this.since = BigInt(since);
    this.outbox = outbox ?? new Outbox();
    this.timelines = new Map();
    for (const [convId, have] of Object.entries(haves)) this.timeline(convId, BigInt(have));
    this.state = "idle"; // idle | greeting | live
    this.link = null;
    this.welcome = null;
    this.heartbeat = DEFAULT_HEARTBEAT;
    this.lastWrite = 0;
    this.lastRead = 0;
    this.pingNonce = 0n;
    this.syncSentAt = new Map(); // convId -> when its request went out
    this.wantSync = new Set(); // conversations to look at for a sync
    this.cursorsSent = { delivered: new Map(), read: new Map() };
    this.cursorsWanted = { delivered: new Map(), read: new Map() };
    this.cursorFlushAt = 0;
    this.caughtUp = false;
  }

  timeline(convId, have = 0n) {
    let tl = this.timelines.get(convId);
    if (tl === undefined) {
      if (this.timelines.size >= MAX_CONVERSATIONS) return null;
      tl = new Timeline(convId, have);
      this.timelines.set(convId, tl);
    }
    return tl;
  }

  // What to keep across reloads: the `since` and every conversation's `have`.
  snapshot() {
    const haves = {};
    for (const [convId, tl] of this.timelines) haves[convId] = tl.have.toString();
    return { since: this.since.toString(), haves };
  }

  // ------------------------------------------------------------------------ link lifecycle

  // The transport is open: greet.
  connected(now) {
    this.state = "greeting";
    this.link = new LinkState();
    this.welcome = null;
    this.caughtUp = false;
    this.lastWrite = now;
    this.lastRead = now;
    return [
      this.out(
        { body: "greet", greet: { token: this.token, device_id: this.deviceId, since: this.since } },
        now,
      ),
      event("state", { state: "greeting" }),
    ];
  }

  // The transport is gone: forget the link, keep the outbox and the timelines.
  disconnected() {
    this.state = "idle";
    this.link = null;
    for (const tl of this.timelines.values()) tl.onDisconnect();
    this.syncSentAt.clear();
    return [event("state", { state: "offline" })];
  }

  out(env, now) {
    this.lastWrite = now;
    return write(env);
  }

  // Through the link window (numbered), or straight out for control frames.
  send(env, now) {
    if (this.link === null) return [];
    try {
      return this.link.send(env, now).map((e) => this.out(e, now));
    } catch (err) {
      if (err instanceof LinkError) return [{ type: "close", reason: err.message, reconnect: true }];
      throw err;
    }
  }

  // ------------------------------------------------------------------------ incoming

  receive(env, now) {
    this.lastRead = now;
    if (this.link === null) return [];
    const body = env.body;
    if (this.state === "greeting") {
      if (body === "welcome") return this.onWelcome(env.welcome, now);
      if (body === "error") return this.onError(env.error, now);
      if (body === "ping") return [this.out({ body: "pong", pong: { nonce: env.ping.nonce } }, now)];
      return [{ type: "close", reason: `${body} before WELCOME`, reconnect: true }];
    }
    switch (body) {
      case "link_ack":
        return this.onLinkAck(env.link_ack, now);
      case "ping":
        return [this.out({ body: "pong", pong: { nonce: env.ping.nonce } }, now)];
      case "pong":
        return [];
      case "error":
        return this.onError(env.error, now);
      case "typing":
        return [event("typing", { convId: env.typing.conv_id, userId: env.typing.user_id, typing: env.typing.typing })];
      case "welcome":
        return [{ type: "close", reason: "second WELCOME", reconnect: true }];
      default:
        break;
    }
    if (env.seq === 0n) {
      return [event("protocol", { detail: `windowed ${body ?? "empty"} frame with seq 0` })];
    }
    let released;
    try {
      released = this.link.receive(env);
    } catch (err) {
      if (err instanceof LinkError) return [{ type: "close", reason: err.message, reconnect: true }];
      throw err;
    }
    const effects = [];
    for (const e of released) effects.push(...this.dispatch(e, now));
    return effects;
  }

  dispatch(env, now) {
    switch (env.body) {
      case "chat":
        return this.onChat(env.chat, now);
      case "ack":
        return this.onAck(env.ack, now);
      case "cursor":
        return this.onCursor(env.cursor);
      case "sync_done":
        return this.onSyncDone(env.sync_done, now);
      case "conv_state":
        return this.onConvState(env.conv_state, now);
      case "caught_up":
        this.since = env.caught_up.since;
        this.caughtUp = true;
        return [event("caught-up", { since: this.since })];
      case "presence":
        return [
          event("presence", {
            userId: env.presence.user_id,
            online: env.presence.state === PresenceState.ONLINE,
            lastSeen: env.presence.last_seen,
          }),
        ];
      case "group_receipt":
        return [event("group-receipt", { receipt: env.group_receipt })];
      default:
        return [event("protocol", { detail: `unexpected ${env.body ?? "empty"} frame` })];
    }
  }

  onWelcome(welcome, now) {
    this.state = "live";
    this.welcome = welcome;
    if (welcome.heartbeat_ms > 0) this.heartbeat = welcome.heartbeat_ms;
    this.link.setWindow(welcome.window);
    const effects = [event("welcome", { welcome }), event("state", { state: "live" })];
    for (const e of this.outbox.all()) effects.push(...this.sendOutboxEntry(e, now));
    // cursors only move forward: the current ones again, in case the last went down unacked
    for (const kind of ["delivered", "read"]) {
      for (const [convId, seq] of this.cursorsSent[kind]) {
        if (!this.cursorsWanted[kind].has(convId)) this.cursorsWanted[kind].set(convId, seq);
      }
      this.cursorsSent[kind].clear();
    }
    return effects;
  }

  onLinkAck(ack, now) {
    try {
      return this.link.onAck(ack.seq, now).map((e) => this.out(e, now));
    } catch (err) {
      if (err instanceof LinkError) return [{ type: "close", reason: err.message, reconnect: true }];
      throw err;
    }
  }

  onError(err, now) {
    const effects = [event("error", { code: err.code, detail: err.detail, msgId: err.ref_msg_id })];
    if (err.ref_msg_id !== 0n) {
      if (err.code === ErrorCode.OUT_OF_ORDER) {
        // the chat it names after is not committed: the conversation goes again, in order
        this.outbox.requeue(err.ref_msg_id, now);
        return [];
      }
      if (err.code === ErrorCode.STALE_KEY) {
        const e = this.outbox.confirm(err.ref_msg_id);
        if (e !== undefined) effects.push(event("stale-key", { id: err.ref_msg_id, convId: e.convId, chat: e.chat }));
      } else {
        const e = this.outbox.refuse(err.ref_msg_id, err.code);
        if (e !== undefined) {
          effects.push(event("failed", { id: err.ref_msg_id, convId: e.convId, code: err.code, detail: err.detail }));
        }
      }
      return effects;
    }
    const terminal = TERMINAL.get(err.code);
    if (terminal !== undefined) {
      effects.push({ type: "close", reason: terminal, reconnect: false, code: err.code });
    }
    void now;
    return effects;
  }

  onChat(chat, now) {
    if (!chat.conv_id || chat.seq === 0n) {
      return [event("protocol", { detail: "chat without conv_id or seq" })];
    }
    const tl = this.timeline(chat.conv_id);
    if (tl === null) return [event("protocol", { detail: "too many conversations" })];
    const effects = [];
    if (chat.from_id === this.userId && this.outbox.has(chat.id)) {
      // ours, back through a sync before its SENT arrived: as good as SENT
      const e = this.outbox.confirm(chat.id);
      effects.push(event("sent", { id: chat.id, convId: chat.conv_id, seq: chat.seq, chat: e.chat }));
    }
    effects.push(...this.offer(tl, chat, now));
    return effects;
  }

  offer(tl, chat, now) {
    const { deliver, duplicate } = tl.offer(chat);
    const effects = [];
    if (duplicate) effects.push(event("duplicate", { convId: tl.convId, seq: chat.seq }));
    effects.push(...this.delivered(tl, deliver, now));
    this.wantSync.add(tl.convId);
    return effects;
  }

  delivered(tl, chats, now) {
    if (chats.length === 0) return [];
    this.wantCursor("delivered", tl.convId, tl.have, now);
    return [event("messages", { convId: tl.convId, chats, have: tl.have })];
  }

  onAck(ack, now) {
    if (ack.ack_type !== AckType.SENT) return [event("protocol", { detail: `ack type ${ack.ack_type}` })];
    const e = this.outbox.confirm(ack.ack_msg_id);
    if (e === undefined) return []; // a second SENT for a resend: already taken
    const convId = ack.conv_id || e.convId;
    const chat = { ...e.chat, conv_id: convId, seq: ack.seq };
    const effects = [event("sent", { id: ack.ack_msg_id, convId, seq: ack.seq, chat })];
    const tl = this.timeline(convId);
    if (tl !== null && ack.seq !== 0n) effects.push(...this.offer(tl, chat, now));
    return effects;
  }

  onCursor(cursor) {
    const mine = cursor.user_id === "" || cursor.user_id === this.userId;
    return [
      event("cursor", {
        convId: cursor.conv_id,
        userId: mine ? this.userId : cursor.user_id,
        mine,
        kind: cursor.type === AckType.READ ? "read" : "delivered",
        seq: cursor.seq,
      }),
    ];
  }

  onSyncDone(done, now) {
    const tl = this.timelines.get(done.conv_id);
    if (tl === undefined) return [event("protocol", { detail: `sync_done for unknown ${done.conv_id}` })];
    this.syncSentAt.delete(done.conv_id);
    const { deliver } = tl.onSyncDone(done);
    this.wantSync.add(tl.convId);
    return this.delivered(tl, deliver, now);
  }

  onConvState(state, now) {
    const tl = this.timeline(state.conv_id);
    if (tl === null) return [event("protocol", { detail: "too many conversations" })];
    const { deliver } = tl.onState(state);
    this.wantSync.add(tl.convId);
    const read = this.cursorsSent.read.get(tl.convId) ?? 0n;
    if (state.read_seq > read) this.cursorsSent.read.set(tl.convId, state.read_seq);
    return [event("conv", { state }), ...this.delivered(tl, deliver, now)];
  }

  // ------------------------------------------------------------------------ outgoing

  // A sealed chat (id, from_id, dest_id, dest_type, msg_type, body, create_time, file, key_id)
  // for `convId`: kept in the outbox, written now if the link is live.
  sendChat(chat, convId, now) {
    this.outbox.add(chat, convId);
    if (this.state !== "live") return [];
    return this.sendOutboxEntry(this.outbox.entries.get(BigInt(chat.id)), now);
  }

  sendOutboxEntry(entry, now) {
    if (this.state !== "live") return [];
    this.outbox.sent(entry.chat.id, now);
    const after = this.outbox.before(entry);
    if (after !== 0n) entry.chat.after_id = after;
    else delete entry.chat.after_id;
    return this.send({ body: "chat", chat: entry.chat }, now);
  }

  // The user has seen `convId` up to `seq`.
  markRead(convId, seq, now) {
    this.wantCursor("read", convId, BigInt(seq), now);
    return [];
  }

  wantCursor(kind, convId, seq, now) {
    const sent = this.cursorsSent[kind].get(convId) ?? 0n;
    const wanted = this.cursorsWanted[kind].get(convId) ?? 0n;
    if (seq > sent && seq > wanted) this.cursorsWanted[kind].set(convId, seq);
    void now;
  }

  typing(convId, on, now) {
    if (this.state !== "live") return [];
    return [this.out({ body: "typing", typing: { conv_id: convId, user_id: "", typing: on } }, now)];
  }

  // Cumulative link ack, due cursors and syncs: call after a burst of receive().
  flush(now) {
    if (this.link === null || this.state !== "live") {
      const ack = this.link?.takeAck();
      return ack ? [this.out(ack, now)] : [];
    }
    const effects = [];
    const ack = this.link.takeAck();
    if (ack !== null) effects.push(this.out(ack, now));
    if (now - this.cursorFlushAt >= CURSOR_EVERY) {
      this.cursorFlushAt = now;
      for (const [kind, type] of [
        ["delivered", AckType.DELIVERED],
        ["read", AckType.READ],
      ]) {
        for (const [convId, seq] of this.cursorsWanted[kind]) {
          effects.push(...this.send({ body: "cursor", cursor: { conv_id: convId, user_id: "", type, seq } }, now));
          this.cursorsSent[kind].set(convId, seq);
        }
        this.cursorsWanted[kind].clear();
      }
    }
    effects.push(...this.pumpSyncs(now));
    return effects;
  }

  pumpSyncs(now) {
    const effects = [];
    for (const [convId, at] of this.syncSentAt) {
      if (now - at >= SYNC_TIMEOUT) {
        this.syncSentAt.delete(convId);
        const tl = this.timelines.get(convId);
        if (tl) tl.request = null;
        this.wantSync.add(convId);
      }
    }
    for (const convId of [...this.wantSync]) {
      if (this.syncSentAt.size >= MAX_SYNCS_OUT) break;
      this.wantSync.delete(convId);
      const tl = this.timelines.get(convId);
      const req = tl?.nextSync();
      if (!req) continue;
      this.syncSentAt.set(convId, now);
      effects.push(...this.send({ body: "sync", sync: req }, now));
    }
    return effects;
  }

  // Timers: retransmits, outbox resends, heartbeat, idle; call every second or so.
  tick(now) {
    if (this.link === null) return [];
    if (now - this.lastRead >= this.heartbeat * IDLE_FACTOR) {
      return [{ type: "close", reason: "the server went silent", reconnect: true }];
    }
    const effects = [];
    try {
      for (const e of this.link.due(now)) effects.push(this.out(e, now));
    } catch (err) {
      if (err instanceof LinkError) return [{ type: "close", reason: err.message, reconnect: true }];
      throw err;
    }
    if (this.state === "live") {
      for (const e of this.outbox.due(now)) {
        // still in the link window: its retransmit is the link's business
        if (e.sentAt !== null && this.inWindow(e.chat.id)) continue;
        effects.push(...this.sendOutboxEntry(e, now));
      }
      effects.push(...this.flush(now));
    }
    if (now - this.lastWrite >= this.heartbeat) {
      this.pingNonce += 1n;
      effects.push(this.out({ body: "ping", ping: { nonce: this.pingNonce } }, now));
    }
    return effects;
  }

  inWindow(id) {
    for (const p of this.link.unacked.values()) if (p.env.chat?.id === id) return true;
    return false;
  }
}
