// Chats this device sent that the server has not confirmed (SPEC-timeline.md, "Sending"). Pure.
//
// Rules it keeps:
// - a chat stays until its SENT, or an error that names it with a final code; its content never
//   changes, so a resend (same id, same body) is the same message to the server, which answers
//   it with the same seq; only its after_id (the newest earlier chat of its conversation still
//   here) is set as it goes out, and an OUT_OF_ORDER sends its conversation again in order;
// - after a reconnect every entry goes out again; while connected, one unconfirmed for
//   RESEND_AFTER ms goes out again too;
// - bounded: at most MAX_ENTRIES wait; past that `add` refuses, and the caller tells the user;
// - entries can be saved and restored (plain JSON), so a reload does not lose what was typed.

import { ErrorCode } from "../proto/im.js";

// Unconfirmed this long on a live link, a chat is sent again (the server's own retransmit
// timer is 5 s, common/window.py; a commit waits for the writer's batch, well under this).
export const RESEND_AFTER = 10_000;
// What one device may have in flight: far above what a person types while offline.
export const MAX_ENTRIES = 500;
// After an OUT_OF_ORDER sends a conversation again, its other refusals this soon are the echo.
export const REQUEUE_GAP = 2_000;

// Codes after which sending the same chat again can never succeed (SPEC-timeline.md).
export const FINAL_CODES = new Set([
  ErrorCode.NOT_FRIEND,
  ErrorCode.BAD_MESSAGE,
  ErrorCode.TOO_LARGE,
  ErrorCode.ID_REUSED,
  ErrorCode.NOT_MEMBER,
  ErrorCode.MUTED,
  ErrorCode.REFUSED,
  ErrorCode.NO_SUCH_FILE,
  ErrorCode.SPOOFED_SENDER,
]);

export class OutboxFull extends Error {}

export class Outbox {
  constructor(maxEntries = MAX_ENTRIES) {
    this.maxEntries = maxEntries;
    this.entries = new Map(); // id (BigInt) -> {chat, convId, sentAt}
  }

  get size() {
    return this.entries.size;
  }

  has(id) {
    return this.entries.has(BigInt(id));
  }

  get(id) {
    return this.entries.get(BigInt(id))?.chat;
  }

  add(chat, convId) {
    if (this.entries.size >= this.maxEntries) {
      throw new OutboxFull(`${this.maxEntries} messages are waiting to be sent`);
    }
    const id = BigInt(chat.id);
    if (this.entries.has(id)) throw new Error(`message id ${id} is already in the outbox`);
    this.entries.set(id, { chat, convId, sentAt: null });
  }

  // Mark an entry as just written to the link.
  sent(id, now) {
    const e = this.entries.get(BigInt(id));
    if (e !== undefined) e.sentAt = now;
  }

  // SENT arrived: the entry leaves; its chat, or undefined for a SENT we did not wait for (a
  // resend confirmed twice, or another device's).
  confirm(id) {
    const key = BigInt(id);
    const e = this.entries.get(key);
    if (e === undefined) return undefined;
    this.entries.delete(key);
    return e;
  }

  // An error naming `id`: the entry if the code is final (it leaves), else undefined (it stays
  // and is resent later).
  refuse(id, code) {
    const key = BigInt(id);
    if (!FINAL_CODES.has(code) || !this.entries.has(key)) return undefined;
    const e = this.entries.get(key);
    this.entries.delete(key);
    return e;
  }

  // The after_id for `entry` as it goes out now: the newest earlier chat of its conversation
  // still here (0n: none). Entries are kept in the order they were made, which is id order.
  before(entry) {
    let prev = 0n;
    for (const e of this.entries.values()) {
      if (e === entry) return prev;
      if (e.convId === entry.convId) prev = BigInt(e.chat.id);
    }
    return 0n;
  }

  // OUT_OF_ORDER for `id`: every entry of its conversation goes out again, oldest first, at the
  // next tick. The refusals of the chats behind it (every one behind a lost chat is refused
  // too) change nothing: not before that tick, nor for REQUEUE_GAP ms after it.
  requeue(id, now) {
    const e = this.entries.get(BigInt(id));
    if (e === undefined || e.sentAt === null) return 0;
    this.requeued ??= new Map();
    const last = this.requeued.get(e.convId);
    if (last !== undefined && now - last < REQUEUE_GAP) return 0;
    if (this.requeued.size > MAX_ENTRIES) this.requeued.clear(); // at most one per entry's conv
    this.requeued.set(e.convId, now);
    let n = 0;
    for (const x of this.entries.values()) {
      if (x.convId === e.convId) {
        x.sentAt = null;
        n += 1;
      }
    }
    return n;
  }

  // Everything, oldest first: what to send after a (re)connect.
  all() {
    return [...this.entries.values()];
  }

  // What has waited for its SENT too long on a live link.
  due(now) {
    return this.all().filter((e) => e.sentAt === null || now - e.sentAt >= RESEND_AFTER);
  }

  // Plain JSON for localStorage: ids and seqs as strings, bytes as base64.
  save(encodeChat) {
    return this.all().map((e) => ({ conv_id: e.convId, chat: encodeChat(e.chat) }));
  }

  restore(saved, decodeChat) {
    for (const item of saved ?? []) {
      if (this.entries.size >= this.maxEntries) break;
      try {
        const chat = decodeChat(item.chat);
        if (!this.entries.has(BigInt(chat.id))) this.add(chat, item.conv_id);
      } catch {
        // a damaged entry is dropped, the rest restored
      }
    }
  }
}
