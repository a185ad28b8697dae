// Endpoints the server does not have on main yet, in one place so phase 2 only fills them in:
// friendship requests and blocks (issue 12), conversations and history (issue 13), groups
// (issue 14), and the WebSocket address (issue 16's connector transport). Each call is coded
// against the documented shape; while the server lacks the route (it is not in /openapi.json),
// a client-side stub answers instead, so the app works on today's server with less.

import { RestError } from "./rest.js";

// Which upcoming routes this server has, read once from its OpenAPI document.
export async function capabilities(rest) {
  let paths = null;
  try {
    const resp = await fetch(`${rest.base}/openapi.json`);
    if (resp.ok) paths = (await resp.json()).paths ?? {};
  } catch {
    // no document: assume a server that has everything
  }
  const has = (p) => paths === null || Object.hasOwn(paths, p);
  return {
    requests: has("/friends/requests"),
    blocks: has("/blocks"),
    groups: has("/groups"),
    conversations: has("/conversations"),
    history: has("/conversations/{conv_id}/messages"),
  };
}

const idOf = (item) => (typeof item === "string" ? item : item?.user_id);

// {incoming: [user ids], outgoing: [user ids]}. Stub: none (today's PUT befriends at once).
export async function friendRequests(rest, caps) {
  if (!caps.requests) return { incoming: [], outgoing: [] };
  const r = await rest.call("GET", "/friends/requests");
  return {
    incoming: (r.incoming ?? []).map(idOf).filter(Boolean),
    outgoing: (r.outgoing ?? []).map(idOf).filter(Boolean),
  };
}

export async function blocks(rest, caps) {
  if (!caps.blocks) return [];
  const r = await rest.call("GET", "/blocks", { raw: true });
  return ((await r.json()) ?? []).map(idOf).filter(Boolean);
}

function needs(flag, what) {
  if (!flag) throw new RestError(501, `${what} needs a newer server`);
}

export async function block(rest, caps, userId) {
  needs(caps.blocks, "blocking");
  return rest.call("PUT", `/blocks/${encodeURIComponent(userId)}`, { ok: [200, 201, 204] });
}

export async function unblock(rest, caps, userId) {
  needs(caps.blocks, "blocking");
  return rest.call("DELETE", `/blocks/${encodeURIComponent(userId)}`, { ok: [200, 204, 404] });
}

// A group as the app keeps it: {group_id, name, members: [{user_id, role}], keys: {key_id:
// key}, key_id (the newest)}. Accepts `key`/`key_id` or `keys: [{key_id, key}]` from the server.
export function normalizeGroup(g) {
  const keys = {};
  for (const k of g.keys ?? []) keys[k.key_id] = k.key;
  if (g.key) keys[g.key_id ?? 0] = g.key;
  const ids = Object.keys(keys).map(Number);
  return {
    group_id: String(g.group_id ?? g.id),
    name: g.name ?? String(g.group_id ?? g.id),
    members: (g.members ?? []).map((m) => (typeof m === "string" ? { user_id: m, role: "member" } : m)),
    keys,
    key_id: g.key_id ?? (ids.length ? Math.max(...ids) : 0),
    role: g.role,
  };
}

export async function groups(rest, caps) {
  if (!caps.groups) return [];
  const r = await rest.call("GET", "/groups", { raw: true });
  const data = await r.json();
  return (Array.isArray(data) ? data : data.groups ?? []).map(normalizeGroup);
}

export async function group(rest, caps, groupId) {
  needs(caps.groups, "groups");
  return normalizeGroup(await rest.call("GET", `/groups/${encodeURIComponent(groupId)}`));
}

// GET /groups/{id}/keys: [{key_id, key, from_seq, to_seq}], the keys of the seqs this user may
// read (a member gets the current one). Without them the app can neither seal nor open.
export async function groupKeys(rest, caps, groupId) {
  needs(caps.groups, "groups");
  const r = await rest.call("GET", `/groups/${encodeURIComponent(groupId)}/keys`, { raw: true });
  const data = await r.json();
  return Array.isArray(data) ? data : [];
}

export async function createGroup(rest, caps, name, members) {
  needs(caps.groups, "groups");
  return normalizeGroup(await rest.call("POST", "/groups", { json: { name, members }, ok: [200, 201] }));
}

export async function invite(rest, caps, groupId, userId) {
  needs(caps.groups, "groups");
  const path = `/groups/${encodeURIComponent(groupId)}/members/${encodeURIComponent(userId)}`;
  return rest.call("PUT", path, { ok: [200, 201, 202, 204] });
}

export async function leave(rest, caps, groupId, me) {
  needs(caps.groups, "groups");
  const path = `/groups/${encodeURIComponent(groupId)}/members/${encodeURIComponent(me)}`;
  return rest.call("DELETE", path, { ok: [200, 204] });
}

// GET /conversations: [{conv_id, type, peer_id, last_seq, last_message, unread, read_seq,
// peer_read_seq, peer_delivered_seq}]. Stub: none; the WebSocket's conv_state frames and the
// friend list make the list meanwhile.
export async function conversations(rest, caps) {
  if (!caps.conversations) return [];
  const r = await rest.call("GET", "/conversations", { raw: true });
  const data = await r.json();
  return Array.isArray(data) ? data : data.conversations ?? [];
}

// A message from REST as the codec's ChatMsg shape: ids and seqs BigInt, body bytes.
export function chatFromJson(m) {
  const big = (v) => BigInt(v ?? 0);
  const bytes = (b64) => {
    if (!b64) return new Uint8Array(0);
    const s = atob(b64.replace(/-/g, "+").replace(/_/g, "/"));
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  };
  const enumOf = (v, names) => (typeof v === "number" ? v : names.indexOf(v));
  return {
    id: big(m.id),
    from_id: m.from_id,
    dest_id: m.dest_id,
    dest_type: enumOf(m.dest_type, ["DEST_TYPE_UNSPECIFIED", "SINGLE", "GROUP"]),
    msg_type: enumOf(m.msg_type, ["MSG_TYPE_UNSPECIFIED", "TEXT", "FILE", "SYSTEM"]),
    body: bytes(m.body),
    create_time: big(m.create_time),
    file: m.file ? { id: m.file.id, size: big(m.file.size), checksum: m.file.checksum } : undefined,
    conv_id: m.conv_id,
    seq: big(m.seq),
    server_time: big(m.server_time),
    key_id: m.key_id ?? 0,
  };
}

// Up to `limit` messages of `convId` below seq `before` (0: the newest), oldest first. Stub: the
// messages this page already holds (`local(before, limit)`), i.e. what the session synced.
export async function history(rest, caps, convId, before, limit, local) {
  if (!caps.history) return local(before, limit);
  const q = new URLSearchParams({ limit: String(limit) });
  if (before > 0n) q.set("before", String(before));
  const r = await rest.call("GET", `/conversations/${encodeURIComponent(convId)}/messages?${q}`, { raw: true });
  const data = await r.json();
  return (Array.isArray(data) ? data : data.messages ?? []).map(chatFromJson);
}

// Where the connector's WebSocket listens: the login answer's, if it names one; else the
// page's host on IM_WS_PORT's default, 9083. `localStorage["im:ws-url"]` overrides both.
export const DEFAULT_WS_PORT = 9083;

export function websocketUrl(login, loc = location, storage = localStorage) {
  const override = storage.getItem("im:ws-url");
  if (override) return override;
  const given = login.ws_url ?? login.websocket;
  if (given) return given;
  const scheme = loc.protocol === "https:" || login.tls ? "wss" : "ws";
  return `${scheme}://${loc.hostname}:${DEFAULT_WS_PORT}/ws`;
}
