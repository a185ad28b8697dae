"""Signed, expiring tokens, verified locally by any process that knows the cluster secret.

Format: ``v1.<payload>.<signature>``, both base64url without padding; the payload is compact JSON
``{"u": user, "d": device, "e": expiry (unix s), "j": token id, "r": role, "i": issued (unix
ms), "s": id slot}``; the signature is HMAC-SHA256 over ``v1.<payload>``. A connector checks a
GREET without a REST round trip. Roles: ``user`` for clients, ``node`` for a connector opening
a link to a transfer. The id slot (user tokens only) is the device's slot 0..63 from REST login:
the message ids the device makes carry it (common/ids.py), which keeps two devices' ids apart.

Revocation (DESIGN.md §6): a signature stays valid until expiry, so a revoked token is refused by
a lookup. Two kinds of :class:`Revocation` exist: one token id (logout), and every token of a user
issued before an instant (password change, which is why tokens carry ``i``). REST stores them and
publishes them; connectors keep the recent ones in a :class:`RevokedSet` and close the sessions
that match.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass

from common.errors import AuthError
from common.ids import SLOTS

_PREFIX = "v1"
# Tokens are short; anything longer is garbage and is refused before any work is done.
MAX_TOKEN_LEN = 1024
NO_SLOT = -1  # Claims.slot of a token without the claim


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
    issued_ms: int = 0  # 0 for a token made before the claim existed: older than any cutoff
    # the device's message id slot; NO_SLOT for a token made before slots existed (or a node's)
    slot: int = NO_SLOT


@dataclass(frozen=True, slots=True)
class Revocation:
    """``token_id`` set: that one token (of ``user_id``, so a connector finds its sessions). Else
    every token of ``user_id`` issued before ``before_ms``. Either way it matters only until
    ``expires`` (unix s), when the tokens it covers have expired anyway."""

    expires: int
    token_id: str = ""
    user_id: str = ""
    before_ms: int = 0

    def covers(self, claims: Claims) -> bool:
        if self.token_id:
            return claims.token_id == self.token_id
        return claims.user_id == self.user_id and claims.issued_ms < self.before_ms

    def encode(self) -> str:
        """Compact JSON, for a pub/sub channel."""
        if self.token_id:
            return json.dumps(
                {"j": self.token_id, "u": self.user_id, "e": self.expires}, separators=(",", ":")
            )
        return json.dumps(
            {"u": self.user_id, "b": self.before_ms, "e": self.expires}, separators=(",", ":")
        )

    @classmethod
    def decode(cls, text: str | bytes) -> Revocation:
        """The inverse of :meth:`encode`; ``ValueError`` for anything else."""
        try:
            raw = json.loads(text)
            if "j" in raw:
                return cls(int(raw["e"]), token_id=str(raw["j"]), user_id=str(raw.get("u", "")))
            return cls(expires=int(raw["e"]), user_id=str(raw["u"]), before_ms=int(raw["b"]))
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a revocation: {exc}") from None


class RevokedSet:
    """The revocations recently seen, each kept until it expires, at most ``cap`` of them.

    Sans-IO and bounded: at the cap the oldest entry is dropped (the database still holds it, and
    connectors also check it at GREET). Per user only the latest cutoff matters, since a later
    password change covers everything an earlier one did.
    """

    def __init__(self, cap: int = 100_000) -> None:
        self._cap = cap
        self._tokens: OrderedDict[str, int] = OrderedDict()  # token id -> expires
        self._users: OrderedDict[str, tuple[int, int]] = OrderedDict()  # -> (before_ms, expires)

    def __len__(self) -> int:
        return len(self._tokens) + len(self._users)

    def add(self, rev: Revocation, now: float | None = None) -> None:
        t = time.time() if now is None else now
        if rev.expires <= t:
            return
        if rev.token_id:
            self._tokens[rev.token_id] = rev.expires
            self._tokens.move_to_end(rev.token_id)
        else:
            before, expires = self._users.get(rev.user_id, (0, 0))
            self._users[rev.user_id] = (max(before, rev.before_ms), max(expires, rev.expires))
            self._users.move_to_end(rev.user_id)
        self._trim(t)

    def covers(self, claims: Claims, now: float | None = None) -> bool:
        t = time.time() if now is None else now
        expires = self._tokens.get(claims.token_id)
        if expires is not None and expires > t:
            return True
        cut = self._users.get(claims.user_id)
        return cut is not None and cut[1] > t and claims.issued_ms < cut[0]

    def _trim(self, now: float) -> None:
        # insertion order is roughly age order: drop expired entries from the front, and the
        # oldest beyond the cap; an expired entry further in waits its turn (it covers nothing)
        while self._tokens:
            token, expires = next(iter(self._tokens.items()))
            if expires > now and len(self._tokens) <= self._cap:
                break
            del self._tokens[token]
        while self._users:
            user, (_, until) = next(iter(self._users.items()))
            if until > now and len(self._users) <= self._cap:
                break
            del self._users[user]


class TokenSigner:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("token secret must be at least 16 bytes")
        self._key = secret

    def _sig(self, signed: bytes) -> str:
        return _b64(hmac.new(self._key, signed, hashlib.sha256).digest())

    def issue(
        self, user_id: str, ttl: int, *, device_id: str = "", role: str = "user", slot: int = 0
    ) -> str:
        """``slot``: the device's id slot, for user tokens (REST login allocates it)."""
        if not 0 <= slot < SLOTS:
            raise ValueError(f"id slot {slot} is not in 0..{SLOTS - 1}")
        now = time.time()
        claims: dict[str, str | int] = {
            "u": user_id,
            "d": device_id,
            "e": int(now) + ttl,
            "j": secrets.token_urlsafe(12),
            "r": role,
            "i": int(now * 1000),
        }
        if role == "user":
            claims["s"] = slot
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
            role_of = raw["r"]
            claims = Claims(
                str(raw["u"]),
                str(raw["d"]),
                int(raw["e"]),
                str(raw["j"]),
                # one "user" for every connection's claims, not a copy each
                sys.intern(role_of) if type(role_of) is str else role_of,
                int(raw.get("i", 0)),
                int(raw.get("s", NO_SLOT)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError(f"malformed token payload: {exc}") from None
        if not (claims.slot == NO_SLOT or 0 <= claims.slot < SLOTS):
            raise AuthError("malformed token payload: bad id slot")
        if claims.role != role:
            raise AuthError(f"token is for role {claims.role!r}, not {role!r}")
        if claims.expires <= (time.time() if now is None else now):
            raise AuthError("token expired")
        return claims
