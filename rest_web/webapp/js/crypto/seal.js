// Message body sealing in the browser, byte for byte the format of common/crypto.py, so a body
// sealed here opens in the Python library and the other way round.
//
// AES-256-GCM with the conversation's key, a fresh random 96-bit nonce per message, and the
// message id, sender and recipient bound in as associated data, so a body moved onto another
// message fails to open. Layout: version (1 byte, 1) | nonce (12) | ciphertext + 16-byte tag.
// Associated data: UTF-8 of "<msg id in decimal>\0<from_id>\0<dest_id>".

export const VERSION = 1;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;

export class SealError extends Error {
  constructor(message) {
    super(message);
    this.name = "SealError";
  }
}

const encoder = new TextEncoder();

export function base64urlDecode(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new SealError("key is not base64url");
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function base64urlEncode(bytes) {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// Imported keys, by their base64url text: importing is async and costs a little each time.
// Bounded: a user has at most a few thousand conversations.
const KEY_CACHE_MAX = 4096;
const keyCache = new Map();

// A CryptoKey for a conversation key given as base64url text (43 characters, 32 bytes) or raw.
export async function importKey(key) {
  if (typeof key !== "string") return importRaw(key);
  const hit = keyCache.get(key);
  if (hit !== undefined) return hit;
  const imported = await importRaw(base64urlDecode(key));
  if (keyCache.size >= KEY_CACHE_MAX) keyCache.delete(keyCache.keys().next().value);
  keyCache.set(key, imported);
  return imported;
}

async function importRaw(raw) {
  if (!(raw instanceof Uint8Array) || raw.length !== 32) {
    throw new SealError("conversation key is not 256 bits");
  }
  return crypto.subtle.importKey("raw", raw, { name: "AES-GCM" }, false, ["encrypt", "decrypt"]);
}

export function associatedData(msgId, fromId, destId) {
  return encoder.encode(`${BigInt(msgId)}\0${fromId}\0${destId}`);
}

export async function seal(key, msgId, fromId, destId, plaintext) {
  const k = await importKey(key);
  const nonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
  const ct = new Uint8Array(
    await crypto.subtle.encrypt(
      { name: "AES-GCM", iv: nonce, additionalData: associatedData(msgId, fromId, destId) },
      k,
      plaintext,
    ),
  );
  const out = new Uint8Array(1 + NONCE_BYTES + ct.length);
  out[0] = VERSION;
  out.set(nonce, 1);
  out.set(ct, 1 + NONCE_BYTES);
  return out;
}

export async function openSealed(key, msgId, fromId, destId, sealed) {
  if (!(sealed instanceof Uint8Array) || sealed.length < 1 + NONCE_BYTES + TAG_BYTES) {
    throw new SealError("not a sealed body");
  }
  if (sealed[0] !== VERSION) throw new SealError("not a sealed body");
  const k = await importKey(key);
  try {
    const plain = await crypto.subtle.decrypt(
      {
        name: "AES-GCM",
        iv: sealed.subarray(1, 1 + NONCE_BYTES),
        additionalData: associatedData(msgId, fromId, destId),
      },
      k,
      sealed.subarray(1 + NONCE_BYTES),
    );
    return new Uint8Array(plain);
  } catch {
    throw new SealError("sealed body failed authentication");
  }
}

export async function sealText(key, msgId, fromId, destId, text) {
  return seal(key, msgId, fromId, destId, encoder.encode(text));
}

const strictDecoder = new TextDecoder("utf-8", { fatal: true });

export async function openText(key, msgId, fromId, destId, sealed) {
  const plain = await openSealed(key, msgId, fromId, destId, sealed);
  try {
    return strictDecoder.decode(plain);
  } catch {
    throw new SealError("sealed text is not UTF-8");
  }
}
