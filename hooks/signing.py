"""The signature on every webhook request, and how a receiver checks it.

Header ``X-IM-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is HMAC-SHA256, keyed with
``IM_WEBHOOK_SECRET``, over the bytes ``<t>.`` followed by the raw request body. Binding the
timestamp into the MAC is what lets a receiver refuse replays: it recomputes the MAC over the
body exactly as received (before any JSON parsing), compares in constant time, and refuses a
``t`` further than its tolerance from its own clock; within the tolerance, the delivery id header
(``X-IM-Delivery``, the same on every retry of one event) tells a repeat from a new event.

Several ``v1=`` entries may appear (a receiver accepts any that matches), so the secret can be
rotated by signing with both for a while. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-IM-Signature"
EVENT_HEADER = "X-IM-Event"
DELIVERY_HEADER = "X-IM-Delivery"
# Five minutes either way: clocks of well-run hosts agree far better, and a retry is re-signed
# at each attempt, so only a replay (or a receiver with a wrong clock) is ever that old.
TOLERANCE = 300


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-IM-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(
    secret: bytes, header: str, body: bytes, now: float, tolerance: float = TOLERANCE
) -> bool:
    """True when ``header`` is a signature of ``body`` by ``secret`` made within ``tolerance``
    seconds of ``now``; False for anything else, malformed headers included."""
    timestamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if not value.isdigit() or len(value) > 12:
                return False
            timestamp = int(value)
        elif key == "v1":
            macs.append(value)
    if timestamp is None or not macs or abs(now - timestamp) > tolerance:
        return False
    expected = _mac(secret, timestamp, body)
    want = expected.encode()
    return any(hmac.compare_digest(want, m.encode("utf-8", "replace")) for m in macs)
