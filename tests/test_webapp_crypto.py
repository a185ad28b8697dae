"""Sealing in the browser is the Python library's format, both ways: text bodies (common/crypto.py)
and files (common/filecrypt.py, client/files.py), the latter also through the real POST /files
and GET /files/{id} of a REST server."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from browser import PASSWORD, RestServer, b64, big, run_async, run_js

from client.files import FileInfo, download_file, upload_file
from client.rest import RestClient
from common.crypto import SealError, new_pair_key, open_sealed, seal
from common.filecrypt import DEFAULT_CHUNK, FileDecryptor, FileEncryptor, new_file_key

SEAL = 'const s = await import("/app/js/crypto/seal.js");'
FILES = 'const f = await import("/app/js/crypto/filecrypt.js");'
MSG_ID = (1_767_000_000_000 << 18) | (5 << 12) | 7  # past 2^53, as real ids are
TEXTS = ["", "hello", "héllo ✓ 𝄞 中文", "x" * 70_000]


def test_text_sealed_in_the_page_opens_in_python(page: Any) -> None:
    key = new_pair_key()
    sealed = run_js(
        page,
        SEAL
        + """
        const out = [];
        for (const text of arg.texts) {
          out.push(await s.sealText(arg.key, untag(arg.id), "alice", "bob", text));
        }
        return tag(out);
        """,
        {"key": key, "id": big(MSG_ID), "texts": TEXTS},
    )
    for text, body in zip(TEXTS, sealed, strict=True):
        assert body[0] == 1 and len(body) == 1 + 12 + len(text.encode()) + 16
        assert open_sealed(key, MSG_ID, "alice", "bob", body) == text.encode()
        # the ids are bound in: the same body on another message does not open
        with pytest.raises(SealError):
            open_sealed(key, MSG_ID + 1, "alice", "bob", body)
        with pytest.raises(SealError):
            open_sealed(key, MSG_ID, "bob", "alice", body)
    # a fresh nonce each time
    assert len({bytes(b[1:13]) for b in sealed}) == len(sealed)


def test_text_sealed_in_python_opens_in_the_page(page: Any) -> None:
    key = new_pair_key()
    bodies = [seal(key, MSG_ID, "bob", "g1", t.encode()) for t in TEXTS]
    tampered = bytearray(bodies[1])
    tampered[-1] ^= 1
    got = run_js(
        page,
        SEAL
        + """
        const id = untag(arg.id);
        const opened = [];
        for (const b of arg.bodies) {
          opened.push(await s.openText(arg.key, id, "bob", "g1", untag(b)));
        }
        const fails = {};
        const tries = {
          tampered: () => s.openText(arg.key, id, "bob", "g1", untag(arg.tampered)),
          otherId: () => s.openText(arg.key, id + 1n, "bob", "g1", untag(arg.bodies[1])),
          otherDest: () => s.openText(arg.key, id, "bob", "g2", untag(arg.bodies[1])),
          otherKey: () => s.openText(arg.other, id, "bob", "g1", untag(arg.bodies[1])),
          short: () => s.openText(arg.key, id, "bob", "g1", new Uint8Array(20)),
        };
        for (const [k, t] of Object.entries(tries)) {
          try { await t(); fails[k] = "opened"; } catch (e) { fails[k] = e.name; }
        }
        return { opened, fails };
        """,
        {
            "key": key,
            "other": new_pair_key(),
            "id": big(MSG_ID),
            "bodies": [b64(b) for b in bodies],
            "tampered": b64(bytes(tampered)),
        },
    )
    assert got["opened"] == TEXTS
    assert got["fails"] == dict.fromkeys(got["fails"], "SealError") and len(got["fails"]) == 5


SIZES = [0, 1, DEFAULT_CHUNK - 1, DEFAULT_CHUNK, DEFAULT_CHUNK + 1, 3 * DEFAULT_CHUNK + 100]


def test_file_encrypted_in_the_page_decrypts_in_python(page: Any) -> None:
    """Sizes around the chunk boundary, fed to the page's encryptor in odd pieces."""
    files = [os.urandom(n) for n in SIZES]
    got = run_js(
        page,
        FILES
        + """
        const out = [];
        for (const data of arg.files.map(untag)) {
          const key = f.newFileKey();
          const enc = await f.FileEncryptor.create(key);
          const parts = [enc.header()];
          for (let at = 0; at < data.length; at += 10007) {
            parts.push(await enc.feed(data.subarray(at, at + 10007)));
          }
          parts.push(await enc.finish());
          out.push({ key, sealed: f.concat(parts), size: f.ciphertextSize(data.length) });
        }
        return tag(out);
        """,
        {"files": [b64(d) for d in files]},
    )
    for data, result in zip(files, got, strict=True):
        assert len(result["sealed"]) == result["size"]
        dec = FileDecryptor(result["key"])
        assert dec.feed(result["sealed"]) + dec.finish() == data


def test_file_encrypted_in_python_decrypts_in_the_page(page: Any) -> None:
    cases = []
    for n in SIZES:
        data = os.urandom(n)
        key = new_file_key()
        enc = FileEncryptor(key)
        sealed = enc.header() + enc.feed(data) + enc.finish()
        cases.append((data, key, sealed))
    cut = cases[-1][2][:-1]
    got = run_js(
        page,
        FILES
        + """
        const out = [];
        for (const c of arg.cases) {
          const dec = await f.FileDecryptor.create(untag(c.key));
          const sealed = untag(c.sealed);
          const parts = [];
          for (let at = 0; at < sealed.length; at += 999) {
            parts.push(await dec.feed(sealed.subarray(at, at + 999)));
          }
          parts.push(await dec.finish());
          out.push(f.concat(parts));
        }
        let cut;
        try {
          const dec = await f.FileDecryptor.create(untag(arg.cases[arg.cases.length - 1].key));
          await dec.feed(untag(arg.cut)); await dec.finish(); cut = "opened";
        } catch (e) { cut = e.name; }
        return tag({ out, cut });
        """,
        {"cases": [{"key": b64(k), "sealed": b64(s)} for _, k, s in cases], "cut": b64(cut)},
    )
    assert got["out"] == [d for d, _, _ in cases]
    assert got["cut"] == "SealError"


def test_incremental_sha256_matches_hashlib(page: Any) -> None:
    data = os.urandom(200_003)
    got = run_js(
        page,
        """
        const h = await import("/app/js/crypto/sha256.js");
        const data = untag(arg);
        const out = {};
        for (const n of [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, data.length]) {
          const s = new h.Sha256();
          for (let at = 0; at < n; at += 37) s.update(data.subarray(at, Math.min(n, at + 37)));
          out[n] = h.toHex(s.digest());
        }
        return out;
        """,
        b64(data),
    )
    assert got == {str(n): hashlib.sha256(data[:n]).hexdigest() for n in map(int, got)}
    assert len(got) == 11


def test_files_go_both_ways_through_rest(page: Any, rest: RestServer, tmp_path: Path) -> None:
    """The page encrypts and uploads to POST /files, Python downloads and opens it; Python uploads,
    the page downloads, verifies and opens it (the same user: the uploader may read its files)."""
    rest.register("filer")
    data = os.urandom(150_000)
    sent = run_js(
        page,
        """
        const { Rest } = await import("/app/js/net/rest.js");
        const files = await import("/app/js/net/files.js");
        const rest = new Rest("");
        await rest.login("filer", arg.password, "web-files");
        const progress = [];
        const up = await files.uploadFile(rest, new Blob([untag(arg.data)]), "dir/ünï.bin",
                                          (phase, done, total) => progress.push(phase));
        return tag({ ...up, phases: [...new Set(progress)] });
        """,
        {"password": PASSWORD, "data": b64(data)},
    )
    assert sent["phases"] == ["encrypting", "uploading"]
    body = sent["body"]
    assert body["name"] == "ünï.bin"
    info = FileInfo(
        file_id=body["file_id"],
        size=sent["ref"]["size"],
        checksum=body["checksum"],
        name=body["name"],
        plain_size=body["size"],
        sha256=body["sha256"],
        key=body["key"],
    )
    src = tmp_path / "from-python.bin"
    back = os.urandom(70_000)
    src.write_bytes(back)

    async def python_side() -> Any:
        client = RestClient(rest.url)
        try:
            await client.login("filer", PASSWORD, "py-files")
            await download_file(client, info, tmp_path / "got.bin")
            return await upload_file(client, src)
        finally:
            await client.close()

    up = run_async(python_side())
    assert (tmp_path / "got.bin").read_bytes() == data
    opened = run_js(
        page,
        """
        const { Rest } = await import("/app/js/net/rest.js");
        const files = await import("/app/js/net/files.js");
        const rest = new Rest("");
        await rest.login("filer", arg.password, "web-files");
        const ref = { id: arg.id, size: untag(arg.size), checksum: arg.checksum };
        const info = { file_id: arg.id, checksum: arg.checksum, size: untag(arg.plain),
                       name: "x", key: untag(arg.key), sha256: untag(arg.sha) };
        const blob = await files.downloadFile(rest, ref, info);
        let bad;
        try {
          await files.downloadFile(rest, ref, { ...info, sha256: new Uint8Array(32) });
          bad = "accepted";
        } catch (e) { bad = e.name; }
        return tag({ data: new Uint8Array(await blob.arrayBuffer()), bad });
        """,
        {
            "password": PASSWORD,
            "id": up.ref.file_id,
            "size": big(up.ref.size),
            "checksum": up.ref.checksum,
            "plain": big(up.plain_size),
            "key": b64(up.key),
            "sha": b64(up.sha256),
        },
    )
    assert opened["data"] == back
    assert opened["bad"] == "FileCheckError"
