"""The browser's protocol logic (js/core/session.js and its parts), run in the page against
scripted frames, with the time passed in: catch-up from conv_state, gaps and holds, duplicates,
sync_done proving holes empty, SENT and the outbox across a reconnect, cursors, link acks."""

from __future__ import annotations

from typing import Any

from browser import run_js

# A scripted server: frames are plain objects as the decoder makes them; `effects` collects what
# the session did, `writes(kind)` the bodies it wrote of that kind.
HARNESS = """
const { Session } = await import("/app/js/core/session.js");
const pb = await import("/app/js/proto/im.js");
const A = pb.AckType;
let now = 1_000_000;
let linkSeq = 0n;
const log = [];
const feed = (s, effects) => { log.push(...effects); return effects; };
const frame = (body, value) => {
  linkSeq += 1n;
  // through the real codec, as the connection would
  return pb.decodeEnvelope(pb.encodeEnvelope({ seq: linkSeq, [body]: value }));
};
const control = (body, value) => pb.decodeEnvelope(pb.encodeEnvelope({ [body]: value }));
const writes = (effects, kind) => effects.filter((e) => e.type === "write" && e.env.body === kind)
                                          .map((e) => e.env[kind]);
const events = (effects, name) => effects.filter((e) => e.type === "event" && e.name === name);
const chat = (conv, seq, from = "bob", id = 1000n + BigInt(seq)) => ({
  id, from_id: from, dest_id: "alice", dest_type: pb.DestType.SINGLE, msg_type: pb.MsgType.TEXT,
  body: new Uint8Array([Number(seq) & 255]), conv_id: conv, seq: BigInt(seq), server_time: 5n,
});
const seqsOf = (effects) => events(effects, "messages").flatMap((e) => e.chats.map((c) => Number(c.seq)));
const start = (opts = {}) => {
  const s = new Session({ userId: "alice", deviceId: "web-1", token: "tok", ...opts });
  linkSeq = 0n;
  const greet = feed(s, s.connected(now));
  feed(s, s.receive(control("welcome", { user_id: "alice", heartbeat_ms: 15000, window: 64, id_slot: 3 }), now));
  return { s, greet };
};
const C = "p:alice:bob";
"""


def js(page: Any, body: str) -> Any:
    return run_js(page, HARNESS + body)


def test_greet_carries_since_and_conv_state_starts_a_sync(page: Any) -> None:
    got = js(
        page,
        """
        const { s, greet } = start({ since: 77n, haves: { [C]: 2n } });
        const g = writes(greet, "greet")[0];
        const st = s.receive(frame("conv_state", { conv_id: C, type: 1, peer_id: "bob", last_seq: 5n,
                                                   device_seq: 1n, min_seq: 1n }), now);
        const f = s.flush(now += 200);
        const cu = s.receive(frame("caught_up", { since: 99n }), now);
        return tag({ greet: g, conv: events(st, "conv").length, sync: writes(f, "sync"),
                     acks: writes(f, "link_ack"), since: s.since, caught: events(cu, "caught-up").length,
                     snap: s.snapshot() });
        """,
    )
    assert got["greet"] == {"token": "tok", "device_id": "web-1", "since": 77}
    assert got["conv"] == 1
    # have was 2 (kept from before): ask for 3.. up to the head
    assert got["sync"] == [{"conv_id": "p:alice:bob", "from_seq": 3, "to_seq": 0, "limit": 0}]
    assert got["acks"] == [{"seq": 1}]
    assert got["since"] == 99 and got["caught"] == 1
    assert got["snap"] == {"since": "99", "haves": {"p:alice:bob": "2"}}


def test_gap_is_synced_held_push_released_and_sync_done_proves_holes(page: Any) -> None:
    got = js(
        page,
        """
        const { s } = start();
        const out = {};
        out.first = seqsOf(s.receive(frame("chat", chat(C, 1)), now));
        // seq 4 while have = 1: held, and the gap 2..3 is asked for
        out.held = seqsOf(s.receive(frame("chat", chat(C, 4)), now));
        out.gapSync = writes(s.flush(now += 200), "sync");
        // only 2 exists for us (3 does not): sync_done(2..3) proves 3 empty, releasing 4
        out.fill = seqsOf(s.receive(frame("chat", chat(C, 2)), now));
        out.done = seqsOf(s.receive(frame("sync_done", { conv_id: C, from_seq: 2n, to_seq: 3n, last_seq: 4n }), now));
        out.have = s.timelines.get(C).have;
        out.after = writes(s.flush(now += 200), "sync");
        // duplicates of every kind are dropped
        const dup = [...s.receive(frame("chat", chat(C, 2)), now), ...s.receive(frame("chat", chat(C, 4)), now)];
        out.dupMessages = seqsOf(dup);
        out.dupEvents = events(dup, "duplicate").length;
        return tag(out);
        """,
    )
    assert got["first"] == [1]
    assert got["held"] == []
    assert got["gapSync"] == [{"conv_id": "p:alice:bob", "from_seq": 2, "to_seq": 3, "limit": 0}]
    assert got["fill"] == [2]
    assert got["done"] == [4]
    assert got["have"] == 4
    assert got["after"] == []
    assert got["dupMessages"] == [] and got["dupEvents"] == 2


def test_paged_catch_up_and_out_of_order_pushes(page: Any) -> None:
    """A sync page that stops short of the head leads to the next page; live pushes that arrive
    meanwhile are held and come out in order, each once."""
    got = js(
        page,
        """
        const { s } = start();
        s.receive(frame("conv_state", { conv_id: C, last_seq: 6n, min_seq: 1n }), now);
        const first = writes(s.flush(now += 200), "sync");
        const shown = [];
        // live pushes 8 and 7 overtake the sync
        shown.push(...seqsOf(s.receive(frame("chat", chat(C, 8)), now)));
        shown.push(...seqsOf(s.receive(frame("chat", chat(C, 7)), now)));
        for (const n of [1, 2, 3]) shown.push(...seqsOf(s.receive(frame("chat", chat(C, n)), now)));
        // the page held 3 of them: the server's cap
        shown.push(...seqsOf(s.receive(frame("sync_done", { conv_id: C, from_seq: 1n, to_seq: 3n, last_seq: 8n }), now)));
        const second = writes(s.flush(now += 200), "sync");
        for (const n of [4, 5, 6]) shown.push(...seqsOf(s.receive(frame("chat", chat(C, n)), now)));
        shown.push(...seqsOf(s.receive(frame("sync_done", { conv_id: C, from_seq: 4n, to_seq: 6n, last_seq: 8n }), now)));
        const third = writes(s.flush(now += 200), "sync");
        return tag({ first, second, third, shown, have: s.timelines.get(C).have });
        """,
    )
    assert got["first"] == [{"conv_id": "p:alice:bob", "from_seq": 1, "to_seq": 0, "limit": 0}]
    assert got["second"] == [{"conv_id": "p:alice:bob", "from_seq": 4, "to_seq": 6, "limit": 0}]
    assert got["shown"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert got["third"] == [] and got["have"] == 8


def test_outbox_resends_after_reconnect_and_sent_counts_as_held(page: Any) -> None:
    got = js(
        page,
        """
        const s = new Session({ userId: "alice", deviceId: "web-1", token: "tok" });
        const mine = { id: 555n, from_id: "alice", dest_id: "bob", dest_type: 1, msg_type: 1,
                       body: new Uint8Array([1, 2, 3]), create_time: 1n };
        const out = {};
        out.offline = s.sendChat(mine, C, now).length;   // not connected: kept, not written
        s.connected(now);
        linkSeq = 0n;
        const w = s.receive(control("welcome", { user_id: "alice", window: 64 }), now);
        out.resent = tag(writes(w, "chat"));
        out.resentSeq = tag(w.filter((e) => e.type === "write").map((e) => e.env.seq));
        // the link drops before SENT: the next connection sends it again, same bytes
        s.disconnected();
        s.connected(now);
        const w2 = s.receive(control("welcome", { user_id: "alice", window: 64 }), now);
        out.again = tag(writes(w2, "chat"));
        const sent = s.receive(frame("ack", { ack_type: A.SENT, ack_msg_id: 555n, conv_id: C, seq: 1n }), now);
        out.sent = tag(events(sent, "sent").map((e) => [e.id, e.seq]));
        out.shownOwn = seqsOf(sent);
        out.outbox = s.outbox.size;
        out.second = s.receive(frame("ack", { ack_type: A.SENT, ack_msg_id: 555n, conv_id: C, seq: 1n }), now).length;
        out.delivered = tag(writes(s.flush(now += 200), "cursor"));
        return out;
        """,
    )
    chat = {
        "id": 555,
        "from_id": "alice",
        "dest_id": "bob",
        "dest_type": 1,
        "msg_type": 1,
        "body": b"\x01\x02\x03",
        "create_time": 1,
    }
    assert got["offline"] == 0
    assert got["resent"] == [chat] and got["resentSeq"] == [1]
    assert got["again"] == [chat]
    assert got["sent"] == [[555, 1]]
    assert got["shownOwn"] == [1]
    assert got["outbox"] == 0
    assert got["second"] == 0  # a second SENT for the resend: nothing more
    assert got["delivered"] == [{"conv_id": "p:alice:bob", "user_id": "", "type": 2, "seq": 1}]


def test_errors_final_or_not_and_terminal(page: Any) -> None:
    got = js(
        page,
        """
        const { s } = start();
        const mk = (id) => ({ id, from_id: "alice", dest_id: "bob", dest_type: 1, msg_type: 1,
                               body: new Uint8Array([1]) });
        s.sendChat(mk(1n), C, now);
        s.sendChat(mk(2n), C, now);
        const E = pb.ErrorCode;
        const fin = s.receive(control("error", { code: E.NOT_FRIEND, ref_msg_id: 1n }), now);
        const soft = s.receive(control("error", { code: E.RATE_LIMITED, ref_msg_id: 2n }), now);
        const term = s.receive(control("error", { code: E.REPLACED }), now);
        return tag({ failed: events(fin, "failed").map((e) => e.id), soft: events(soft, "failed").length,
                     left: [...s.outbox.entries.keys()], close: term.filter((e) => e.type === "close") });
        """,
    )
    assert got["failed"] == [1]
    assert got["soft"] == 0 and got["left"] == [2]
    assert len(got["close"]) == 1 and got["close"][0]["reconnect"] is False


def test_chats_name_their_predecessor_and_out_of_order_sends_the_conversation_again(
    page: Any,
) -> None:
    got = js(
        page,
        """
        const { s } = start();
        const mk = (id, to = "bob") => ({ id, from_id: "alice", dest_id: to, dest_type: 1,
                                          msg_type: 1, body: new Uint8Array([1]) });
        const first = [];
        first.push(...writes(s.sendChat(mk(1n), C, now), "chat"));
        first.push(...writes(s.sendChat(mk(2n, "carol"), "p:alice:carol", now), "chat"));
        first.push(...writes(s.sendChat(mk(3n), C, now), "chat"));
        first.push(...writes(s.sendChat(mk(4n), C, now), "chat"));
        const E = pb.ErrorCode;
        // chat 1 was lost on its way: 3 and 4 come back from the writer
        const oo = s.receive(control("error", { code: E.OUT_OF_ORDER, ref_msg_id: 3n }), now);
        const oo2 = s.receive(control("error", { code: E.OUT_OF_ORDER, ref_msg_id: 4n }), now);
        const again = writes(s.tick(now += 1000), "chat");
        // chat 4's refusal of the first round arrives late: the echo, nothing more goes out
        s.receive(control("error", { code: E.OUT_OF_ORDER, ref_msg_id: 4n }), now);
        const echo = writes(s.tick(now += 1000), "chat").length;
        s.receive(control("error", { code: E.OUT_OF_ORDER, ref_msg_id: 4n }), now += 1500);
        const later = writes(s.tick(now += 1000), "chat").length;
        return tag({ first: first.map((c) => [c.id, c.after_id ?? 0]), effects: oo.length + oo2.length,
                     again: again.map((c) => [c.id, c.after_id ?? 0]), kept: s.outbox.size,
                     echo, later });
        """,
    )
    assert got["first"] == [[1, 0], [2, 0], [3, 1], [4, 3]]
    assert got["effects"] == 0, "nothing to show: the chats are still on their way"
    assert got["again"] == [[1, 0], [3, 1], [4, 3]], "bob's conversation again, oldest first"
    assert got["kept"] == 4
    assert got["echo"] == 0, "a refusal within the gap sends nothing again"
    assert got["later"] == 3, "one after it sends the conversation again"


def test_link_layer_acks_dedupes_pings_and_cursors(page: Any) -> None:
    got = js(
        page,
        """
        const { s } = start();
        const out = {};
        s.receive(frame("chat", chat(C, 1)), now);
        s.receive(frame("chat", chat(C, 2)), now);
        // the server retransmits link seq 2: re-acked, not processed again
        const again = pb.decodeEnvelope(pb.encodeEnvelope({ seq: 2n, chat: chat(C, 2) }));
        out.retransmit = seqsOf(s.receive(again, now));
        const f = s.flush(now += 200);
        out.acks = tag(writes(f, "link_ack"));
        out.cursors = tag(writes(f, "cursor"));
        out.pong = tag(writes(s.receive(control("ping", { nonce: 42n }), now), "pong"));
        s.markRead(C, 2n, now);
        s.markRead(C, 1n, now);   // backwards: ignored
        out.read = tag(writes(s.flush(now += 200), "cursor"));
        out.nothing = writes(s.flush(now += 200), "cursor").length;
        // the server acks our two cursors (else the tick below retransmits them, not pings)
        s.receive(control("link_ack", { seq: 2n }), now);
        // heartbeat: a ping once nothing was written for heartbeat_ms
        const t = s.tick(now += 16_000);
        out.ping = writes(t, "ping").length;
        // silence for four heartbeats: the link is dead
        out.idle = s.tick(now += 61_000).filter((e) => e.type === "close").length;
        // a windowed frame far past the window closes the link
        const far = pb.decodeEnvelope(pb.encodeEnvelope({ seq: 10_000n, chat: chat(C, 3) }));
        out.far = s.receive(far, now).filter((e) => e.type === "close").length;
        return out;
        """,
    )
    assert got["retransmit"] == []
    assert got["acks"] == [{"seq": 2}]
    assert got["cursors"] == [{"conv_id": "p:alice:bob", "user_id": "", "type": 2, "seq": 2}]
    assert got["pong"] == [{"nonce": 42}]
    assert got["read"] == [{"conv_id": "p:alice:bob", "user_id": "", "type": 3, "seq": 2}]
    assert got["nothing"] == 0
    assert got["far"] == 1
    assert got["ping"] == 1
    assert got["idle"] == 1


def test_timeline_bounds_what_it_holds(page: Any) -> None:
    got = js(
        page,
        """
        const { Timeline, MAX_HELD } = await import("/app/js/core/timeline.js");
        const t = new Timeline(C, 0n);
        for (let i = 0; i < MAX_HELD + 50; i++) t.offer(chat(C, 10 + i));
        const req = t.nextSync();
        const second = t.nextSync();   // one request at a time
        return tag({ held: t.held.size, max: MAX_HELD, dropped: t.dropped, req, second });
        """,
    )
    assert got["held"] == got["max"] and got["dropped"] == 50
    assert got["req"] == {"conv_id": "p:alice:bob", "from_seq": 1, "to_seq": 9, "limit": 0}
    assert got["second"] is None


def test_message_ids_carry_the_slot_and_never_repeat(page: Any) -> None:
    got = js(
        page,
        """
        const { MessageIds, slotOf } = await import("/app/js/core/ids.js");
        let t = 1_767_000_000_000;
        const ids = new MessageIds(5, () => t);
        const out = [];
        for (let i = 0; i < 5000; i++) out.push(ids.next());   // more than 64 in one ms
        t -= 10_000;                                            // the clock goes back
        out.push(ids.next());
        const distinct = new Set(out.map(String)).size;
        const increasing = out.every((v, i) => i === 0 || v > out[i - 1]);
        return tag({ distinct, increasing, slots: [...new Set(out.map(slotOf))], first: out[0] });
        """,
    )
    assert got["distinct"] == 5001 and got["increasing"]
    assert got["slots"] == [5]
    assert got["first"] == (1_767_000_000_000 << 12) | (5 << 6)  # common/ids.py's layout
    from common.ids import MessageIdGen, slot_of

    assert slot_of(int(got["first"])) == 5 and MessageIdGen(5).slot == 5
