// The link layer of one connection, as common/window.py keeps it on the Python side. Pure.
//
// Windowed frames (chat, ack, cursor, sync, sync_done, conv_state, caught_up, presence,
// group_receipt) carry link seq 1, 2, 3, ... per connection and direction; control frames
// (greet, welcome, link_ack, error, ping, pong, typing) carry 0.
//
// Sending: each windowed frame is numbered and kept until a cumulative link_ack covers it, and
// resent with the same number when unacked for RETRY_TIMEOUT; after MAX_RETRIES the link is dead.
// At most `window` frames are unacked (WELCOME says how many); more wait in a bounded queue.
// Receiving: frames are released strictly in order; a seq already released is a duplicate (to
// be acked again, not processed); a seq ahead is parked (at most `window` ahead); one
// cumulative ack covers everything released.

// From common/window.py: the server's defaults, mirrored.
export const RETRY_TIMEOUT = 5_000;
export const MAX_RETRIES = 3;
export const DEFAULT_WINDOW = 1024;
// Frames waiting for window room; the outbox bounds chats, this bounds cursors and syncs too.
export const MAX_QUEUED = 4096;

export const WINDOWED = new Set([
  "chat",
  "ack",
  "cursor",
  "sync",
  "sync_done",
  "conv_state",
  "caught_up",
  "presence",
  "group_receipt",
]);

export class LinkError extends Error {
  constructor(message, code) {
    super(message);
    this.name = "LinkError";
    this.code = code;
  }
}

export class LinkState {
  constructor(window = DEFAULT_WINDOW) {
    this.window = window;
    this.nextOut = 1n;
    this.unacked = new Map(); // seq -> {env, deadline, retries}
    this.queued = []; // envelopes waiting for window room
    this.lastIn = 0n; // highest incoming seq released in order
    this.parked = new Map(); // incoming seq -> env
    this.ackOwed = false;
  }

  setWindow(window) {
    if (window > 0) this.window = window;
  }

  // Number `env` if it is windowed and there is room; return the envelopes to write now.
  send(env, now) {
    if (!WINDOWED.has(env.body)) return [{ ...env, seq: 0n }];
    if (this.unacked.size >= this.window) {
      if (this.queued.length >= MAX_QUEUED) throw new LinkError("send queue full", "queue");
      this.queued.push(env);
      return [];
    }
    return [this.number(env, now)];
  }

  number(env, now) {
    const seq = this.nextOut;
    this.nextOut += 1n;
    const out = { ...env, seq };
    this.unacked.set(seq, { env: out, deadline: now + RETRY_TIMEOUT, retries: 0 });
    return out;
  }

  // A link_ack from the peer: frees window room; returns the queued envelopes that now fit.
  onAck(upto, now) {
    upto = BigInt(upto);
    if (upto >= this.nextOut) {
      throw new LinkError(`link ack ${upto} for a frame never sent`, "bad-ack");
    }
    for (const seq of [...this.unacked.keys()]) {
      if (seq <= upto) this.unacked.delete(seq);
    }
    const out = [];
    while (this.queued.length && this.unacked.size < this.window) {
      out.push(this.number(this.queued.shift(), now));
    }
    return out;
  }

  // Frames whose retransmit timer ran out; throws once one has used every retry.
  due(now) {
    const out = [];
    for (const [seq, p] of this.unacked) {
      if (p.deadline > now) continue;
      if (p.retries >= MAX_RETRIES) {
        throw new LinkError(`frame ${seq} unacked after ${p.retries} retransmits`, "retry");
      }
      p.retries += 1;
      p.deadline = now + RETRY_TIMEOUT;
      out.push(p.env);
    }
    return out;
  }

  // An incoming windowed frame: the frames now released in order ([] when parked or a
  // duplicate). Either way an ack is owed.
  receive(env) {
    const seq = BigInt(env.seq);
    this.ackOwed = true;
    if (seq <= this.lastIn || this.parked.has(seq)) return [];
    if (seq > this.lastIn + BigInt(this.window)) {
      throw new LinkError(`frame ${seq} beyond the window (last ${this.lastIn})`, "window");
    }
    if (seq !== this.lastIn + 1n) {
      this.parked.set(seq, env);
      return [];
    }
    const out = [env];
    this.lastIn = seq;
    for (;;) {
      const next = this.parked.get(this.lastIn + 1n);
      if (next === undefined) break;
      this.parked.delete(this.lastIn + 1n);
      this.lastIn += 1n;
      out.push(next);
    }
    return out;
  }

  // The link_ack to send now, or null.
  takeAck() {
    if (!this.ackOwed) return null;
    this.ackOwed = false;
    return { seq: 0n, body: "link_ack", link_ack: { seq: this.lastIn } };
  }
}
