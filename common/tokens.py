"""Signed, expiring tokens, verified locally by any process that knows the cluster secret.

Format: ``v1.<payload>.<signature>``, both base64url without padding; the payload is compact JSON
``{"u": user, "d": device, "e": expiry (unix s), "j": token id, "r": role}``; the signature is
HMAC-SHA256 over ``v1.<payload>``. A connector checks a GREET without a REST round trip.
Roles: ``user`` for clients, ``node`` for a connector opening a link to a transfer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from common.errors import AuthError

_PREFIX = "v1"
# Tokens are short; anything longer is garbage and is refused before any work is done.
MAX_TOKEN_LEN = 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: str
    device_id: str
    expires: int
    token_id: str
    role: str


class TokenSigner:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("token secret must be at least 16 bytes")
        self._key = secret

    def _sig(self, signed: bytes) -> str:
        return _b64(hmac.new(self._key, signed, hashlib.sha256).digest())

    def issue(self, user_id: str, ttl: int, *, device_id: str = "", role: str = "user") -> str:
        claims = {
            "u": user_id,
            "d": device_id,
            "e": int(time.time()) + ttl,
            "j": secrets.token_urlsafe(12),
            "r": role,
        }
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signed = f"{_PREFIX}.{payload}"
        return f"{signed}.{self._sig(signed.encode())}"

    def verify(self, token: str, *, role: str = "user", now: float | None = None) -> Claims:
        """Claims of a genuine, unexpired token of ``role``; :class:`AuthError` otherwise."""
        if len(token) > MAX_TOKEN_LEN:
            raise AuthError("token too long")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise AuthError("malformed token")
        expected = self._sig(f"{parts[0]}.{parts[1]}".encode())
        if not hmac.compare_digest(expected, parts[2]):
            raise AuthError("bad token signature")
        try:
            raw = json.loads(_unb64(parts[1]))
            claims = Claims(str(raw["u"]), str(raw["d"]), int(raw["e"]), str(raw["j"]), raw["r"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError(f"malformed token payload: {exc}") from None
        if claims.role != role:
            raise AuthError(f"token is for role {claims.role!r}, not {role!r}")
        if claims.expires <= (time.time() if now is None else now):
            raise AuthError("token expired")
        return claims
