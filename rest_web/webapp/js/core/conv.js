// Conversation ids (SPEC-timeline.md): "p:<a>:<b>" for a pair, the two user ids in byte order;
// "g:<group id>" for a group; "s:<user>" for operator notices to one user.

const utf8 = new TextEncoder();

function byteCompare(a, b) {
  const x = utf8.encode(a);
  const y = utf8.encode(b);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

export function pairConvId(a, b) {
  return byteCompare(a, b) < 0 ? `p:${a}:${b}` : `p:${b}:${a}`;
}

export function groupConvId(groupId) {
  return `g:${groupId}`;
}

// {kind: "pair", peer} | {kind: "group", groupId} | {kind: "system", user} | null
export function parseConvId(convId, me) {
  if (typeof convId !== "string") return null;
  if (convId.startsWith("g:") && convId.length > 2) return { kind: "group", groupId: convId.slice(2) };
  if (convId.startsWith("s:") && convId.length > 2) return { kind: "system", user: convId.slice(2) };
  if (convId.startsWith("p:")) {
    const rest = convId.slice(2);
    // user ids have no ":" (USER_ID_PATTERN), so the split is unambiguous
    const parts = rest.split(":");
    if (parts.length !== 2 || !parts[0] || !parts[1]) return null;
    if (me !== undefined && parts[0] !== me && parts[1] !== me) return null;
    const peer = parts[0] === me ? parts[1] : parts[0];
    return { kind: "pair", peer, users: parts };
  }
  return null;
}
