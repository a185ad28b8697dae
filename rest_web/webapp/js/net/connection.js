// The WebSocket shell around core/session.js: open, feed frames in, write what the session
// says, run its timers, and reconnect with back-off. All protocol decisions are the session's.
//
// Rules it keeps:
// - one binary WebSocket message is one Envelope, no length prefix (SPEC-timeline.md);
// - a frame that does not decode closes the link (the stream cannot be trusted) and reconnects;
// - acks, cursors and syncs are flushed once per burst of frames, not once per frame;
// - a close the session calls terminal (expired token, replaced device) stops reconnecting;
// - the socket's own buffer is bounded: above MAX_BUFFERED bytes unsent, the link is dropped
//   and rebuilt, since the outbox resends what matters.

import { Backoff } from "../core/backoff.js";
import { DecodeError } from "../proto/pb.js";
import { decodeEnvelope, encodeEnvelope } from "../proto/im.js";

export const TICK_MS = 1000;
export const FLUSH_MS = 20;
// Past this much unsent on the socket the server is not reading; start over.
export const MAX_BUFFERED = 8 * 1024 * 1024;
// A connection that stayed up this long resets the back-off.
export const STABLE_MS = 10_000;

export class Connection {
  // url: ws(s)://host:port/ws; onEvent(effect) gets every session event
  constructor({ url, session, onEvent, WebSocketImpl = WebSocket, now = () => Date.now() }) {
    this.url = url;
    this.session = session;
    this.onEvent = onEvent;
    this.WebSocketImpl = WebSocketImpl;
    this.now = now;
    this.backoff = new Backoff();
    this.ws = null;
    this.stopped = true;
    this.timer = null;
    this.flushTimer = null;
    this.retryTimer = null;
    this.openedAt = 0;
    this.stats = { connects: 0, frames_in: 0, frames_out: 0, bad_frames: 0 };
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.open();
    this.timer = setInterval(() => this.apply(this.session.tick(this.now())), TICK_MS);
  }

  stop() {
    this.stopped = true;
    clearInterval(this.timer);
    clearTimeout(this.retryTimer);
    clearTimeout(this.flushTimer);
    this.flushTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, "bye");
    this.apply(this.session.disconnected());
  }

  open() {
    let ws;
    try {
      ws = new this.WebSocketImpl(this.url);
    } catch (err) {
      this.onEvent({ type: "event", name: "link-error", detail: String(err) });
      this.retry();
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.openedAt = this.now();
      this.stats.connects += 1;
      this.apply(this.session.connected(this.now()));
    };
    ws.onmessage = (msg) => {
      if (this.ws !== ws) return;
      if (!(msg.data instanceof ArrayBuffer)) {
        this.drop("a text frame: the protocol is binary", true);
        return;
      }
      let env;
      try {
        env = decodeEnvelope(new Uint8Array(msg.data));
      } catch (err) {
        if (!(err instanceof DecodeError)) throw err;
        this.stats.bad_frames += 1;
        this.drop(`undecodable frame: ${err.message}`, true);
        return;
      }
      this.stats.frames_in += 1;
      this.apply(this.session.receive(env, this.now()));
      this.scheduleFlush();
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.apply(this.session.disconnected());
      this.onEvent({ type: "event", name: "link-closed", code: ev.code, reason: ev.reason });
      if (this.now() - this.openedAt >= STABLE_MS) this.backoff.reset();
      this.retry();
    };
    ws.onerror = () => {
      // onclose follows and decides
    };
  }

  retry() {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    const wait = this.backoff.next();
    this.onEvent({ type: "event", name: "reconnecting", inMs: wait });
    this.retryTimer = setTimeout(() => {
      if (!this.stopped && this.ws === null) this.open();
    }, wait);
  }

  // Close this socket; reconnect unless told otherwise.
  drop(reason, reconnect) {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try {
        ws.close(4000, reason.slice(0, 120));
      } catch {
        // closing a socket that never opened
      }
    }
    this.apply(this.session.disconnected());
    this.onEvent({ type: "event", name: "link-closed", reason, reconnect });
    if (reconnect) this.retry();
    else this.stopped = true;
  }

  scheduleFlush() {
    if (this.flushTimer !== null) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = null;
      this.apply(this.session.flush(this.now()));
    }, FLUSH_MS);
  }

  // Carry out the session's effects, in order.
  apply(effects) {
    for (const eff of effects) {
      if (eff.type === "write") {
        const ws = this.ws;
        if (ws === null || ws.readyState !== 1) continue;
        if (ws.bufferedAmount > MAX_BUFFERED) {
          this.drop("the server is not reading", true);
          return;
        }
        ws.send(encodeEnvelope(eff.env));
        this.stats.frames_out += 1;
      } else if (eff.type === "close") {
        this.onEvent({ type: "event", name: "closed", reason: eff.reason, reconnect: eff.reconnect, code: eff.code });
        this.drop(eff.reason, eff.reconnect);
        return;
      } else {
        this.onEvent(eff);
      }
    }
  }

  // Something the app wants done now (send, read, typing): its effects, then a flush.
  run(effects) {
    this.apply(effects);
    this.scheduleFlush();
  }
}
