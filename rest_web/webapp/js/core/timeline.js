// One conversation's place in its timeline on this device (SPEC-timeline.md, "Session" 5-6):
// which seqs it holds, what it waits for, and what it must ask the server for. Pure: frames in,
// decisions out; no I/O, no clock.
//
// Rules it keeps:
// - `have` is the highest seq held with nothing missing below; it only moves forward;
// - a chat at or below `have`, or already held, is a duplicate and is dropped;
// - a chat at have + 1 is released, then every held one that now follows without a gap;
// - a chat beyond have + 1 is held (at most MAX_HELD; past that it is dropped, and the sync that
//   is due fetches it again) and the gap have + 1 .. s - 1 is asked for, one request at a time;
// - a sync_done covering from have + 1 proves every seq up to its to_seq that did not come empty:
//   `have` jumps to to_seq, releasing what was held below it; a sync_done that starts above
//   have + 1 proves nothing about the seqs before it, and only ends the request;
// - the head (`last`) is the highest seq any frame has named; while have < last and no request
//   is out, one is due: the rest of the gap, or up to the head.

// Live pushes held ahead of a gap, per conversation: a sync page is at most 200 (the server's
// cap, SPEC-im.proto Sync), so five pages of pushes arriving during one catch-up fit.
export const MAX_HELD = 1000;

const max = (a, b) => (a > b ? a : b);

export class Timeline {
  constructor(convId, have = 0n) {
    this.convId = convId;
    this.have = BigInt(have);
    this.last = this.have;
    this.held = new Map(); // seq (BigInt) -> chat
    this.request = null; // the sync out now: {from_seq, to_seq}
    this.ceiling = 0n; // a group left: no seq above this is ours to read (0: none)
    this.dropped = 0; // pushes dropped for want of room, refetched by sync
  }

  // A chat (push or sync answer) with its seq: {deliver: [chats in seq order], duplicate}.
  offer(chat) {
    const s = BigInt(chat.seq);
    if (s <= this.have || this.held.has(s)) return { deliver: [], duplicate: true };
    this.last = max(this.last, s);
    if (s === this.have + 1n) {
      this.have = s;
      return { deliver: [chat, ...this.releaseFollowing()], duplicate: false };
    }
    if (this.held.size >= MAX_HELD) {
      this.dropped += 1;
      return { deliver: [], duplicate: false };
    }
    this.held.set(s, chat);
    return { deliver: [], duplicate: false };
  }

  releaseFollowing() {
    const out = [];
    for (;;) {
      const next = this.held.get(this.have + 1n);
      if (next === undefined) return out;
      this.held.delete(this.have + 1n);
      this.have += 1n;
      out.push(next);
    }
  }

  // Everything up to `seq` is known to this device (its DELIVERED cursor as the server has it,
  // or min_seq - 1): `have` moves up, and what was held at or below it is released in order,
  // since the device holds those messages but may not have shown them.
  advanceTo(seq) {
    seq = BigInt(seq);
    if (seq <= this.have) return [];
    const out = [];
    const below = [...this.held.keys()].filter((s) => s <= seq).sort((a, b) => (a < b ? -1 : 1));
    for (const s of below) {
      out.push(this.held.get(s));
      this.held.delete(s);
    }
    this.have = seq;
    this.last = max(this.last, seq);
    return out.concat(this.releaseFollowing());
  }

  // A conv_state: {deliver}. The starting point is max(have, device_seq, min_seq - 1).
  onState(state) {
    const last = BigInt(state.last_seq ?? 0n);
    this.last = max(this.last, last);
    const maxSeq = BigInt(state.max_seq ?? 0n);
    if (maxSeq > 0n) this.ceiling = maxSeq;
    const floor = max(BigInt(state.device_seq ?? 0n), max(BigInt(state.min_seq ?? 0n) - 1n, 0n));
    return { deliver: this.advanceTo(floor) };
  }

  // Our own chat got SENT at `seq`: the device holds it (the outbox has its bytes).
  onSent(chat) {
    return this.offer(chat);
  }

  // A sync_done: {deliver}. Ends the request it answers.
  onSyncDone(done) {
    const from = BigInt(done.from_seq);
    const to = BigInt(done.to_seq);
    this.last = max(this.last, BigInt(done.last_seq ?? 0n));
    if (this.request !== null && from === this.request.from_seq) this.request = null;
    // proves the range [from, to] only; a stale or shifted answer proves nothing below it
    if (from > this.have + 1n || to < from) return { deliver: [] };
    return { deliver: this.advanceTo(to) };
  }

  // The link went down: the request out on it is lost.
  onDisconnect() {
    this.request = null;
  }

  // The effective head: the last seq this device may read.
  head() {
    return this.ceiling > 0n && this.ceiling < this.last ? this.ceiling : this.last;
  }

  // The sync to send now, or null: the gap below the first held chat, or up to the head.
  nextSync() {
    if (this.request !== null) return null;
    const head = this.head();
    if (this.have >= head && this.held.size === 0) return null;
    if (this.have >= head) {
      // only held chats above the head: impossible unless the head is stale; take them as head
      return null;
    }
    let to = 0n;
    if (this.held.size > 0) {
      let lowest = null;
      for (const s of this.held.keys()) if (lowest === null || s < lowest) lowest = s;
      to = lowest - 1n;
    }
    if (this.ceiling > 0n && (to === 0n || to > this.ceiling)) to = this.ceiling;
    this.request = { from_seq: this.have + 1n, to_seq: to };
    return { conv_id: this.convId, from_seq: this.have + 1n, to_seq: to, limit: 0 };
  }
}
