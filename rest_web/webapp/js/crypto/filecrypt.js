// File encryption for FILE messages, the format of common/filecrypt.py: AES-256-GCM in chunks
// (the "STREAM" construction), so a file of any size is sealed and opened one chunk at a time.
//
// - layout: header | chunk_0 | ... | chunk_n-1, each chunk ciphertext + 16-byte tag;
// - header (15 bytes): "IMF" | version 1 | chunk size (uint32 BE) | nonce prefix (7 random
//   bytes); the whole header is the associated data of every chunk;
// - nonce of chunk i: prefix (7) | i (uint32 BE) | 1 if it is the last chunk else 0;
// - plaintext chunks are `chunk size` bytes except the last, which holds 1..chunk size bytes (0
//   only for an empty file); there is exactly one last chunk, so a cut file fails to open.
// Both directions hold at most one chunk beyond what the caller passes in.

import { SealError } from "./seal.js";

export const MAGIC = new Uint8Array([0x49, 0x4d, 0x46, 0x01]); // "IMF" + version 1
export const HEADER_BYTES = 15;
export const TAG_BYTES = 16;
export const KEY_BYTES = 32;
// the Python library's default: 16-byte tags cost 0.02 % at 64 KiB
export const DEFAULT_CHUNK = 64 * 1024;
// a header may not make a reader buffer more than this per chunk (common/filecrypt.py MAX_CHUNK)
export const MAX_CHUNK = 4 * 1024 * 1024;

export function newFileKey() {
  return crypto.getRandomValues(new Uint8Array(KEY_BYTES));
}

export function ciphertextSize(plainSize, chunkSize = DEFAULT_CHUNK) {
  const chunks = Math.max(1, Math.ceil(plainSize / chunkSize));
  return HEADER_BYTES + plainSize + chunks * TAG_BYTES;
}

function nonce(prefix, index, last) {
  if (index >= 2 ** 32) throw new SealError("file has too many chunks");
  const n = new Uint8Array(12);
  n.set(prefix, 0);
  new DataView(n.buffer).setUint32(7, index);
  n[11] = last ? 1 : 0;
  return n;
}

async function aesKey(raw, usage) {
  if (!(raw instanceof Uint8Array) || raw.length !== KEY_BYTES) {
    throw new SealError("file key must be 32 bytes");
  }
  return crypto.subtle.importKey("raw", raw, { name: "AES-GCM" }, false, [usage]);
}

function concat(parts) {
  const size = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// Feed plaintext in any pieces; the file is header() + every feed() + finish(), in order.
export class FileEncryptor {
  static async create(key, chunkSize = DEFAULT_CHUNK, prefix = null) {
    if (!(chunkSize > 0 && chunkSize <= MAX_CHUNK)) throw new RangeError("bad chunk size");
    const self = new FileEncryptor();
    self.key = await aesKey(key, "encrypt");
    self.chunk = chunkSize;
    self.prefix = prefix ?? crypto.getRandomValues(new Uint8Array(7));
    const header = new Uint8Array(HEADER_BYTES);
    header.set(MAGIC, 0);
    new DataView(header.buffer).setUint32(4, chunkSize);
    header.set(self.prefix, 8);
    self.headerBytes = header;
    self.buf = [];
    self.buffered = 0;
    self.index = 0;
    self.done = false;
    return self;
  }

  header() {
    return this.headerBytes.slice();
  }

  async sealChunk(data, last) {
    const iv = nonce(this.prefix, this.index, last);
    this.index += 1;
    const ct = await crypto.subtle.encrypt(
      { name: "AES-GCM", iv, additionalData: this.headerBytes },
      this.key,
      data,
    );
    return new Uint8Array(ct);
  }

  async feed(data) {
    if (this.done) throw new Error("feed after finish");
    if (data.length) {
      this.buf.push(data);
      this.buffered += data.length;
    }
    const out = [];
    // keep at least one byte back: only finish() knows which chunk is the last
    while (this.buffered > this.chunk) {
      const all = concat(this.buf);
      out.push(await this.sealChunk(all.subarray(0, this.chunk), false));
      const rest = all.slice(this.chunk);
      this.buf = [rest];
      this.buffered = rest.length;
    }
    return concat(out);
  }

  async finish() {
    if (this.done) throw new Error("finish twice");
    this.done = true;
    const out = await this.sealChunk(concat(this.buf), true);
    this.buf = [];
    this.buffered = 0;
    return out;
  }
}

// Feed ciphertext in any pieces; each returned piece of plaintext is already authenticated,
// and finish() throws SealError unless the file was whole and genuine.
export class FileDecryptor {
  static async create(key) {
    const self = new FileDecryptor();
    self.key = await aesKey(key, "decrypt");
    self.header = null;
    self.prefix = null;
    self.chunk = 0;
    self.buf = new Uint8Array(0);
    self.index = 0;
    self.done = false;
    return self;
  }

  async openChunk(data, last) {
    try {
      const plain = await crypto.subtle.decrypt(
        { name: "AES-GCM", iv: nonce(this.prefix, this.index, last), additionalData: this.header },
        this.key,
        data,
      );
      this.index += 1;
      return new Uint8Array(plain);
    } catch {
      throw new SealError(`file chunk ${this.index} failed authentication`);
    }
  }

  async feed(data) {
    if (this.done) throw new SealError("data after the last chunk");
    this.buf = this.buf.length ? concat([this.buf, data]) : data.slice();
    if (this.header === null) {
      if (this.buf.length < HEADER_BYTES) return new Uint8Array(0);
      const head = this.buf.subarray(0, HEADER_BYTES);
      if (!MAGIC.every((b, i) => head[i] === b)) {
        throw new SealError("not an encrypted file (bad header)");
      }
      const chunk = new DataView(head.buffer, head.byteOffset, HEADER_BYTES).getUint32(4);
      if (!(chunk > 0 && chunk <= MAX_CHUNK)) throw new SealError(`chunk size ${chunk} out of range`);
      this.header = head.slice();
      this.chunk = chunk;
      this.prefix = head.slice(8, 15);
      this.buf = this.buf.slice(HEADER_BYTES);
    }
    const sealed = this.chunk + TAG_BYTES;
    const out = [];
    let at = 0;
    while (this.buf.length - at > sealed) {
      out.push(await this.openChunk(this.buf.subarray(at, at + sealed), false));
      at += sealed;
    }
    if (at) this.buf = this.buf.slice(at);
    return concat(out);
  }

  async finish() {
    if (this.done) throw new SealError("finish twice");
    this.done = true;
    if (this.header === null) throw new SealError("file is truncated (no header)");
    if (this.buf.length < TAG_BYTES) throw new SealError("file is truncated");
    const out = await this.openChunk(this.buf, true);
    this.buf = new Uint8Array(0);
    return out;
  }
}

export { concat };
