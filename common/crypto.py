"""Message body sealing with the per-pair key (DESIGN.md §6).

AES-256-GCM, a fresh random 96-bit nonce per message, and the message id, sender and recipient
bound in as associated data, so a sealed body moved onto another message fails to open.
Sealed layout: ``version (1 byte) | nonce (12) | ciphertext+tag``.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.errors import IMError

_VERSION = 1
NONCE_BYTES = 12


class SealError(IMError):
    """A body failed to open: wrong key, tampered bytes or moved to another message."""


def new_pair_key() -> str:
    """A fresh 256-bit key, as stored in ``im_relation.encrypt_key`` (base64url, 43 chars)."""
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def _key(pair_key: str) -> AESGCM:
    raw = base64.urlsafe_b64decode(pair_key + "=" * (-len(pair_key) % 4))
    if len(raw) != 32:
        raise SealError("pair key is not 256 bits")
    return AESGCM(raw)


def _aad(msg_id: int, from_id: str, dest_id: str) -> bytes:
    return f"{msg_id}\x00{from_id}\x00{dest_id}".encode()


def seal(pair_key: str, msg_id: int, from_id: str, dest_id: str, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    ct = _key(pair_key).encrypt(nonce, plaintext, _aad(msg_id, from_id, dest_id))
    return bytes([_VERSION]) + nonce + ct


def open_sealed(pair_key: str, msg_id: int, from_id: str, dest_id: str, sealed: bytes) -> bytes:
    if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[0] != _VERSION:
        raise SealError("not a sealed body")
    nonce = sealed[1 : 1 + NONCE_BYTES]
    try:
        return _key(pair_key).decrypt(
            nonce, sealed[1 + NONCE_BYTES :], _aad(msg_id, from_id, dest_id)
        )
    except InvalidTag:
        raise SealError("sealed body failed authentication") from None
