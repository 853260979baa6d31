"""Webhook signatures: HMAC-SHA256 over ``<timestamp>.<body>``, checked with a replay window.

A delivery carries ``Balance-Signature: t=<unix seconds>,v1=<hex digest>``. The
receiver recomputes the digest with the webhook's secret over the timestamp, a dot
and the raw body bytes, compares in constant time, and refuses a timestamp outside
its tolerance, so a captured delivery cannot be replayed later. Pure functions: the
receiver's side can copy ``verify`` (it needs only the standard library).
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Balance-Signature"
TOLERANCE_SECONDS = 300


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance: int = TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` within ``tolerance`` seconds."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))
