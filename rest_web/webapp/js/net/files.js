// FILE messages in the browser, as client/files.py does them: the file is encrypted with a
// fresh key of its own while it is read, uploaded as ciphertext, and the key travels in the
// message's sealed body (a FileBody). Downloads are checked (stored size and SHA-256, every
// chunk's tag, plaintext size and SHA-256) before anything is handed to the user.
//
// Memory: the file is read and encrypted one piece at a time; the ciphertext is gathered in a
// Blob (the browser may keep large ones on disk) so XHR can report upload progress.

import { FileDecryptor, FileEncryptor, ciphertextSize, newFileKey } from "../crypto/filecrypt.js";
import { Sha256, toHex } from "../crypto/sha256.js";

export const READ_PIECE = 256 * 1024; // client/files.py CHUNK

export class FileCheckError extends Error {
  constructor(message) {
    super(message);
    this.name = "FileCheckError";
  }
}

// Encrypt `file` (a Blob/File); {blob, key, plainSize, sha256, cipherSha256}.
export async function encryptFile(file, onProgress) {
  const key = newFileKey();
  const enc = await FileEncryptor.create(key);
  const plainSha = new Sha256();
  const cipherSha = new Sha256();
  const parts = [];
  const push = (bytes) => {
    if (bytes.length) {
      cipherSha.update(bytes);
      parts.push(bytes);
    }
  };
  push(enc.header());
  for (let at = 0; at < file.size; at += READ_PIECE) {
    const piece = new Uint8Array(await file.slice(at, at + READ_PIECE).arrayBuffer());
    plainSha.update(piece);
    push(await enc.feed(piece));
    onProgress?.(Math.min(at + READ_PIECE, file.size), file.size);
  }
  push(await enc.finish());
  const blob = new Blob(parts, { type: "application/octet-stream" });
  if (blob.size !== ciphertextSize(file.size)) throw new Error("encrypted size is off");
  return { blob, key, plainSize: file.size, sha256: plainSha.digest(), cipherSha256: toHex(cipherSha.digest()) };
}

// Encrypt and upload; the FileRef and FileBody of the message to send.
export async function uploadFile(rest, file, name, onProgress) {
  const sealed = await encryptFile(file, (done, total) => onProgress?.("encrypting", done, total));
  const answer = await rest.upload(sealed.blob, (done, total) => onProgress?.("uploading", done, total));
  if (answer.size !== sealed.blob.size || answer.checksum !== sealed.cipherSha256) {
    throw new FileCheckError("the server stored bytes that differ from what was sent");
  }
  return {
    ref: { id: answer.file_id, size: BigInt(answer.size), checksum: answer.checksum },
    body: {
      file_id: answer.file_id,
      checksum: answer.checksum,
      size: BigInt(sealed.plainSize),
      name: baseName(name),
      key: sealed.key,
      sha256: sealed.sha256,
    },
  };
}

export function baseName(name) {
  const parts = String(name).split(/[\\/]/);
  return parts[parts.length - 1] || "file";
}

function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

// Decrypt ciphertext coming in pieces (an async iterable of Uint8Array) against a FileBody and
// the FileRef's stored size/checksum; the plaintext as a Blob.
export async function decryptStream(pieces, info, storedSize, storedChecksum, onProgress) {
  const dec = await FileDecryptor.create(info.key);
  const cipherSha = new Sha256();
  const plainSha = new Sha256();
  const out = [];
  let got = 0;
  let plainSize = 0;
  const take = (plain) => {
    if (plain.length) {
      plainSha.update(plain);
      plainSize += plain.length;
      out.push(plain);
    }
  };
  for await (const piece of pieces) {
    got += piece.length;
    if (got > storedSize) throw new FileCheckError("the download is longer than the file");
    cipherSha.update(piece);
    take(await dec.feed(piece));
    onProgress?.(got, storedSize);
  }
  if (got !== storedSize || toHex(cipherSha.digest()) !== storedChecksum) {
    throw new FileCheckError("the downloaded bytes do not match the message");
  }
  take(await dec.finish());
  if (BigInt(plainSize) !== BigInt(info.size) || !equal(plainSha.digest(), info.sha256)) {
    throw new FileCheckError("the file's content does not match the message");
  }
  return new Blob(out);
}

async function* bodyPieces(resp) {
  const reader = resp.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    yield value;
  }
}

// Download, verify and decrypt the file of a FILE message ({file: FileRef, info: FileBody}).
export async function downloadFile(rest, ref, info, onProgress) {
  if (ref.id !== info.file_id || ref.checksum !== info.checksum) {
    throw new FileCheckError("the message's file reference was changed");
  }
  const resp = await rest.download(ref.id);
  return decryptStream(bodyPieces(resp), info, Number(ref.size), ref.checksum, onProgress);
}
