// Protobuf wire format for the browser, driven by the field tables that scripts/gen-js-proto
// writes into im.js. Hand-written and small on purpose: the app ships as plain files, with no
// protobuf library and no build step.
//
// Rules it keeps (each matches what the Python protobuf runtime does, so the two agree byte for
// byte on what both can express):
// - proto3 implicit presence: a scalar equal to its default is not written; a oneof member and a
//   message field are written whenever they are set, even when empty;
// - fields go out in field-number order, so an object encodes to the bytes Python's
//   SerializeToString gives for the same message;
// - 64-bit integers are BigInt both ways (message ids pass 2^53); 32-bit ones and enums are
//   Numbers; bytes are Uint8Array; strings are UTF-8, and invalid UTF-8 is refused, as upb does;
// - decoding trusts nothing: every length is checked against what is left, a varint is at most
//   10 bytes, groups (wire types 3 and 4) are refused, unknown fields are skipped and dropped;
//   a field of a known number but another wire type is skipped as unknown, as upb does;
// - encoding refuses what it cannot express faithfully: unknown property names, values out of
//   range, two members of one oneof.

export class DecodeError extends Error {
  constructor(message) {
    super(message);
    this.name = "DecodeError";
  }
}

const UTF8_ENCODER = new TextEncoder();
const UTF8_DECODER = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;

// wire type of each scalar kind; messages, strings and bytes are length-delimited (2)
const VARINT_KINDS = new Set(["uint64", "int64", "uint32", "int32", "bool", "enum"]);

export function wireType(kind) {
  return VARINT_KINDS.has(kind) ? 0 : 2;
}

// ---------------------------------------------------------------------------------- writing

class Writer {
  constructor() {
    this.buf = new Uint8Array(64);
    this.pos = 0;
  }

  reserve(n) {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
  }

  byte(b) {
    this.reserve(1);
    this.buf[this.pos++] = b;
  }

  // v: a Number in [0, 2^32) or a BigInt in [0, 2^64)
  varint(v) {
    if (typeof v === "number") {
      this.reserve(5);
      while (v > 0x7f) {
        this.buf[this.pos++] = (v & 0x7f) | 0x80;
        v = Math.floor(v / 128);
      }
      this.buf[this.pos++] = v;
      return;
    }
    this.reserve(10);
    while (v > 0x7fn) {
      this.buf[this.pos++] = Number(v & 0x7fn) | 0x80;
      v >>= 7n;
    }
    this.buf[this.pos++] = Number(v);
  }

  tag(no, wt) {
    this.varint(no * 8 + wt);
  }

  bytes(b) {
    this.varint(b.length);
    this.reserve(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  finish() {
    return this.buf.slice(0, this.pos);
  }
}

function toBig(v, what) {
  if (typeof v === "bigint") return v;
  if (typeof v === "number" && Number.isSafeInteger(v)) return BigInt(v);
  throw new TypeError(`${what}: expected a BigInt or a safe integer, got ${typeof v} ${v}`);
}

function checkInt(v, lo, hi, what) {
  if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) {
    throw new RangeError(`${what}: ${v} is not an integer in [${lo}, ${hi}]`);
  }
  return v;
}

function isDefault(kind, v) {
  switch (kind) {
    case "string":
      return v === "";
    case "bytes":
      return v.length === 0;
    case "bool":
      return v === false;
    case "uint64":
    case "int64":
      return toBig(v, "integer") === 0n;
    default:
      return v === 0;
  }
}

// Writes one value of a scalar kind (no tag) for packed runs and single fields alike.
function writeScalar(w, kind, v, what) {
  switch (kind) {
    case "string":
      if (typeof v !== "string") throw new TypeError(`${what}: expected a string`);
      w.bytes(UTF8_ENCODER.encode(v));
      return;
    case "bytes":
      if (!(v instanceof Uint8Array)) throw new TypeError(`${what}: expected a Uint8Array`);
      w.bytes(v);
      return;
    case "bool":
      if (typeof v !== "boolean") throw new TypeError(`${what}: expected a boolean`);
      w.byte(v ? 1 : 0);
      return;
    case "uint64": {
      const b = toBig(v, what);
      if (b < 0n || b > U64_MAX) throw new RangeError(`${what}: ${b} is outside uint64`);
      w.varint(b);
      return;
    }
    case "int64": {
      const b = toBig(v, what);
      if (b < I64_MIN || b > I64_MAX) throw new RangeError(`${what}: ${b} is outside int64`);
      w.varint(BigInt.asUintN(64, b));
      return;
    }
    case "uint32":
      w.varint(checkInt(v, 0, 0xffffffff, what));
      return;
    case "int32":
    case "enum": {
      checkInt(v, -0x80000000, 0x7fffffff, what);
      // negative 32-bit values are sign-extended to 64 bits on the wire: ten bytes
      w.varint(v < 0 ? BigInt.asUintN(64, BigInt(v)) : v);
      return;
    }
    default:
      throw new TypeError(`${what}: unsupported kind ${kind}`);
  }
}

function writeMessage(schema, type, obj, w) {
  const spec = schema[type];
  if (spec === undefined) throw new TypeError(`unknown message type ${type}`);
  if (obj === null || typeof obj !== "object") {
    throw new TypeError(`${type}: expected an object, got ${obj === null ? "null" : typeof obj}`);
  }
  for (const key of Object.keys(obj)) {
    if (!spec.byName[key] && !spec.oneofs[key]) {
      throw new TypeError(`${type} has no field ${key}`);
    }
  }
  for (const [name, members] of Object.entries(spec.oneofs)) {
    const set = members.filter((m) => obj[m] !== undefined && obj[m] !== null);
    if (set.length > 1) throw new TypeError(`${type}.${name}: ${set.join(" and ")} both set`);
    const chosen = obj[name];
    if (chosen !== undefined && chosen !== null && chosen !== "" && set[0] !== chosen) {
      throw new TypeError(`${type}.${name} says ${chosen} but ${set[0] ?? "nothing"} is set`);
    }
  }
  for (const f of spec.fields) {
    const v = obj[f.name];
    if (v === undefined || v === null) continue;
    const what = `${type}.${f.name}`;
    if (f.repeated) {
      if (!Array.isArray(v)) throw new TypeError(`${what}: expected an array`);
      if (v.length === 0) continue;
      if (f.kind === "message") {
        for (const item of v) {
          w.tag(f.no, 2);
          w.bytes(encodeMessage(schema, f.type, item));
        }
      } else if (wireType(f.kind) === 0) {
        // proto3 packs repeated numbers
        const inner = new Writer();
        for (const item of v) writeScalar(inner, f.kind, item, what);
        w.tag(f.no, 2);
        w.bytes(inner.finish());
      } else {
        for (const item of v) {
          w.tag(f.no, 2);
          writeScalar(w, f.kind, item, what);
        }
      }
      continue;
    }
    if (f.kind === "message") {
      w.tag(f.no, 2);
      w.bytes(encodeMessage(schema, f.type, v));
      continue;
    }
    if (f.oneof === undefined && isDefault(f.kind, v)) {
      writeScalar(new Writer(), f.kind, v, what); // still type-checked
      continue;
    }
    w.tag(f.no, wireType(f.kind));
    writeScalar(w, f.kind, v, what);
  }
}

export function encodeMessage(schema, type, obj) {
  const w = new Writer();
  writeMessage(schema, type, obj, w);
  return w.finish();
}

// ---------------------------------------------------------------------------------- reading

class Reader {
  constructor(buf, start, end) {
    this.buf = buf;
    this.pos = start;
    this.end = end;
  }

  // A varint as a BigInt (64 bits kept, as protobuf does with longer ones refused).
  varint64() {
    let lo = 0;
    let shift = 0;
    // up to 4 bytes (28 bits) fit a Number exactly; the rest go through BigInt
    while (shift < 28) {
      if (this.pos >= this.end) throw new DecodeError("truncated varint");
      const b = this.buf[this.pos++];
      lo += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return BigInt(lo);
      shift += 7;
    }
    let v = BigInt(lo);
    let bshift = 28n;
    for (let i = 4; i < 10; i++) {
      if (this.pos >= this.end) throw new DecodeError("truncated varint");
      const b = this.buf[this.pos++];
      v |= BigInt(b & 0x7f) << bshift;
      if (b < 0x80) return BigInt.asUintN(64, v);
      bshift += 7n;
    }
    throw new DecodeError("varint longer than 10 bytes");
  }

  // A varint known to be small (tags, lengths): a Number, or an error if it is not small.
  varintSmall() {
    const v = this.varint64();
    if (v > 0x7fffffffn) throw new DecodeError(`length or tag ${v} out of range`);
    return Number(v);
  }

  slice() {
    const n = this.varintSmall();
    if (n > this.end - this.pos) throw new DecodeError(`length ${n} runs past the end`);
    const start = this.pos;
    this.pos += n;
    return [start, this.pos];
  }

  skip(wt) {
    switch (wt) {
      case 0:
        this.varint64();
        return;
      case 1:
        if (this.end - this.pos < 8) throw new DecodeError("truncated fixed64");
        this.pos += 8;
        return;
      case 2:
        this.slice();
        return;
      case 5:
        if (this.end - this.pos < 4) throw new DecodeError("truncated fixed32");
        this.pos += 4;
        return;
      default:
        throw new DecodeError(`wire type ${wt} not accepted`);
    }
  }
}

function scalarFrom(kind, raw) {
  switch (kind) {
    case "uint64":
      return raw;
    case "int64":
      return BigInt.asIntN(64, raw);
    case "uint32":
      return Number(BigInt.asUintN(32, raw));
    case "int32":
    case "enum":
      return Number(BigInt.asIntN(32, raw));
    case "bool":
      return raw !== 0n;
    default:
      throw new DecodeError(`not a varint kind: ${kind}`);
  }
}

function defaultOf(kind) {
  switch (kind) {
    case "string":
      return "";
    case "bytes":
      return new Uint8Array(0);
    case "bool":
      return false;
    case "uint64":
    case "int64":
      return 0n;
    default:
      return 0;
  }
}

// An object of `type` with every field at its default: scalars set, messages and oneofs absent.
export function createMessage(schema, type, init = {}) {
  const spec = schema[type];
  if (spec === undefined) throw new TypeError(`unknown message type ${type}`);
  const obj = {};
  for (const f of spec.fields) {
    if (f.repeated) obj[f.name] = [];
    else if (f.kind !== "message" && f.oneof === undefined) obj[f.name] = defaultOf(f.kind);
  }
  return Object.assign(obj, init);
}

// Depth guard: the schema has no recursion, but a frame can nest unknown-free messages only as
// deep as the schema does; the limit stops a malicious schema-conforming chain anyway.
const MAX_DEPTH = 32;

function readMessage(schema, type, buf, start, end, into, depth) {
  if (depth > MAX_DEPTH) throw new DecodeError("messages nested too deep");
  const spec = schema[type];
  const obj = into ?? createMessage(schema, type);
  const r = new Reader(buf, start, end);
  while (r.pos < r.end) {
    const tag = r.varint64();
    const no = Number(tag >> 3n);
    const wt = Number(tag & 7n);
    if (no === 0) throw new DecodeError("field number 0");
    const f = spec.byNumber[no];
    if (f === undefined) {
      r.skip(wt);
      continue;
    }
    const expected = wireType(f.kind);
    const packed = f.repeated && expected === 0 && wt === 2;
    if (wt !== expected && !packed) {
      r.skip(wt);
      continue;
    }
    if (f.oneof !== undefined && obj[f.oneof] !== f.name) {
      // another member of the oneof was set before: the last one wins, alone
      for (const m of spec.oneofs[f.oneof]) delete obj[m];
      obj[f.oneof] = f.name;
    }
    if (f.kind === "message") {
      const [s, e] = r.slice();
      if (f.repeated) obj[f.name].push(readMessage(schema, f.type, buf, s, e, null, depth + 1));
      else obj[f.name] = readMessage(schema, f.type, buf, s, e, obj[f.name], depth + 1);
    } else if (f.kind === "string" || f.kind === "bytes") {
      const [s, e] = r.slice();
      let v;
      if (f.kind === "bytes") v = buf.slice(s, e);
      else {
        try {
          v = UTF8_DECODER.decode(buf.subarray(s, e));
        } catch {
          throw new DecodeError(`${type}.${f.name}: invalid UTF-8`);
        }
      }
      if (f.repeated) obj[f.name].push(v);
      else obj[f.name] = v;
    } else if (packed) {
      const [s, e] = r.slice();
      const inner = new Reader(buf, s, e);
      while (inner.pos < inner.end) obj[f.name].push(scalarFrom(f.kind, inner.varint64()));
    } else {
      const v = scalarFrom(f.kind, r.varint64());
      if (f.repeated) obj[f.name].push(v);
      else obj[f.name] = v;
    }
  }
  return obj;
}

export function decodeMessage(schema, type, bytes) {
  if (!(bytes instanceof Uint8Array)) {
    if (bytes instanceof ArrayBuffer) bytes = new Uint8Array(bytes);
    else throw new TypeError("decode expects a Uint8Array or an ArrayBuffer");
  }
  return readMessage(schema, type, bytes, 0, bytes.length, null, 0);
}

// Builds the lookup tables of a generated schema once: fields by number and by name, oneofs.
export function compileSchema(tables) {
  const schema = {};
  for (const [type, def] of Object.entries(tables)) {
    const fields = def.fields.map(([no, name, kind, flags, ref]) => ({
      no,
      name,
      kind,
      repeated: flags === "repeated",
      oneof: flags !== "" && flags !== "repeated" ? flags : undefined,
      type: kind === "message" ? ref : undefined,
      enumType: kind === "enum" ? ref : undefined,
    }));
    fields.sort((a, b) => a.no - b.no);
    const byNumber = {};
    const byName = {};
    const oneofs = {};
    for (const f of fields) {
      byNumber[f.no] = f;
      byName[f.name] = f;
      if (f.oneof !== undefined) (oneofs[f.oneof] ??= []).push(f.name);
    }
    schema[type] = { fields, byNumber, byName, oneofs };
  }
  return schema;
}
